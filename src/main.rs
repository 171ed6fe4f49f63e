fn main() {
    xlock::run(std::env::args_os()).exit()
}
