//! The `vdna-db` binary: parses the command line, runs it, picks the exit code
//! (0 success, 1 user error, 2 internal error; a closed output pipe is a success).

fn main() {
    std::process::exit(vdna_db::cli::main());
}
