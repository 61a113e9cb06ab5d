//! `spool`: the command line (being built).

fn main() {
    eprintln!("spool: the command line is being built; use the spool-client library meanwhile");
    std::process::exit(2);
}
