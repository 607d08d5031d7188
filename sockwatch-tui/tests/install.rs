//! What a user's shell and `man` get from sockwatch-tui: the completion script bash loads, and
//! the man page `man -l` renders, both generated from the command-line definition.

mod support;

use std::process::Command;

use support::{
    process::{output_within, COMMAND_TIMEOUT},
    BIN,
};

/// bash sources the generated script and knows how to complete `sockwatch-tui`; completing
/// `--pro` offers `--probe`.
#[test]
fn bash_loads_the_completions() {
    // The completion function is the one `complete -p` names.
    let script = format!(
        r#"source <('{BIN}' completions bash) || exit 1
spec=$(complete -p sockwatch-tui) || exit 1
echo "$spec"
function=${{spec##*-F }}
function=${{function%% *}}
COMP_WORDS=(sockwatch-tui --pro) COMP_CWORD=1 COMP_LINE='sockwatch-tui --pro' COMP_POINT=19
"$function" sockwatch-tui --pro sockwatch-tui
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let output = output_within(
        Command::new("bash").args(["--norc", "-c", &script]),
        COMMAND_TIMEOUT,
        "bash loading the completions",
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("complete ") && l.ends_with(" sockwatch-tui")),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "--probe"), "{text}");
}

/// `man -l` renders the page: its name line, the synopsis, every flag of `--help`.
#[test]
fn man_renders_the_page() {
    let dir = std::env::temp_dir().join(format!("sockwatch-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let page = dir.join("sockwatch-tui.1");
    let roff = output_within(
        Command::new(BIN).arg("man"),
        COMMAND_TIMEOUT,
        "sockwatch-tui man",
    );
    assert!(roff.status.success());
    std::fs::write(&page, &roff.stdout).expect("writing the page");
    let rendered = output_within(
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat"),
        COMMAND_TIMEOUT,
        "man -l",
    );
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    let help = output_within(Command::new(BIN).arg("--help"), COMMAND_TIMEOUT, "--help");
    for flag in String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
    {
        let flag = flag.trim_end_matches(',');
        assert!(text.contains(flag), "the page lacks {flag}");
    }
}
