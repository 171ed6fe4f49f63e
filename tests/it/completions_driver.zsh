# zsh -f zshdrive.zsh FPATH_DIR 'LINE': prints the candidates that zsh's completion
# system offers for LINE<TAB>, one per line, in an interactive zsh on a pseudo-terminal.
zmodload zsh/zpty || { print -u2 'zsh/zpty missing'; exit 2 }
local setup=${TMPDIR:-/tmp}/xlock-zsh-setup.$$
cat > $setup <<SETUP
fpath=(${(q)1} \$fpath)
PROMPT=
autoload -U compinit && compinit -u -D
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
bindkey '^I' complete-word
comp_mark() { print -r -- '<<MARK>>' }
compprefuncs=(comp_mark)
comppostfuncs=(comp_mark exit)
# Print each match as it is added, then add it as usual.
compadd() {
  if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd "\$@"; return; fi
  local -a __hits
  builtin compadd -A __hits "\$@"
  (( \$#__hits )) && print -rl -- '<<C>>'\${^__hits}
  builtin compadd "\$@"
}
print -r -- '<<READY>>'
SETUP
zpty z zsh -f -i
zpty -w z "source ${(q)setup}"
local line
while zpty -r z line; do [[ $line == '<<READY>>'* ]] && break; done
rm -f $setup
zpty -w -n z "$2"$'\t'
integer marks=0
while zpty -r z line; do
  [[ $line == *'<<MARK>>'* ]] && { (( ++marks == 2 )) && break; continue }
  (( marks == 1 )) && [[ $line == '<<C>>'* ]] && print -r -- "${${line#<<C>>}%%$'\r'*}"
done
zpty -d z
