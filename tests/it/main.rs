mod signals_ignored;
