//! `spool completions` and `spool man`: generated from the argument tree, no broker needed.

mod cli_support;

use cli_support::*;

fn spool_offline(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // Nothing listens there: these commands must not try to connect.
    let mut full = vec!["--server".to_string(), "http://127.0.0.1:1".to_string()];
    full.extend(args);
    run_blocking(&full, None, &[])
}

#[test]
fn completion_scripts_name_the_commands_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef spool"),
        ("fish", "complete -c spool"),
    ] {
        let r = spool_offline(&["completions", shell]).ok();
        assert!(r.stdout.contains(marker), "{shell}:\n{}", r.stdout);
        for word in ["topic", "produce", "queue", "redrive"] {
            assert!(r.stdout.contains(word), "{shell} script lacks {word}");
        }
    }
    let bad = spool_offline(&["completions", "cmd.exe"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn man_pages_cover_every_subcommand() {
    let page = spool_offline(&["man"]).ok();
    assert!(page.stdout.contains(".TH spool 1"), "{}", page.stdout);
    assert!(
        page.stdout.contains("queue"),
        "the main page lists the subcommands"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let r = spool_offline(&["man", "--dir", out.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("man pages written"), "{}", r.stdout);
    for name in [
        "spool.1",
        "spool-topic-create.1",
        "spool-queue-redrive.1",
        "spool-completions.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH"), "{name} is not a man page");
    }
}
