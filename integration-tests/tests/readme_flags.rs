//! The README documents every flag the binaries accept: each `--flag` in the
//! `--help` of `tollgate-cp`, `tollgate-dp`, `tollgate-echo` and `tollgatectl`
//! (and of each `tollgatectl` subcommand) must appear in README.md as
//! `` `--flag` ``. A flag added without a line in the README fails here.

use std::collections::BTreeSet;
use std::process::Command;

use tollgate_integration_tests::process::bin_path;

fn help(binary: &str, args: &[&str]) -> String {
    let output = Command::new(bin_path(binary))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("run {binary} --help: {e}"));
    assert!(output.status.success(), "{binary} {args:?} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The long flags an option list declares (lines that start with `-`).
fn flags(help: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', ',', '=', '<']) {
            if let Some(name) = word.strip_prefix("--") {
                if !name.is_empty() && name != "help" && name != "version" {
                    found.insert(format!("--{name}"));
                }
            }
        }
    }
    found
}

/// `tollgatectl`'s subcommands, from its help's "Commands:" list.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_of_every_binary_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let mut missing = Vec::new();
    let mut check = |what: String, help: &str| {
        for flag in flags(help) {
            if !readme.contains(&format!("`{flag}`")) && !readme.contains(&format!("`{flag} ")) {
                missing.push(format!("{what}: {flag}"));
            }
        }
    };
    for binary in ["tollgate-cp", "tollgate-dp", "tollgate-echo"] {
        check(binary.to_string(), &help(binary, &[]));
    }
    let ctl = help("tollgatectl", &[]);
    check("tollgatectl".into(), &ctl);
    let commands = subcommands(&ctl);
    assert!(
        commands.len() >= 5,
        "parsed tollgatectl's commands: {commands:?}"
    );
    for command in commands {
        let sub = help("tollgatectl", &[&command]);
        check(format!("tollgatectl {command}"), &sub);
        for nested in subcommands(&sub) {
            check(
                format!("tollgatectl {command} {nested}"),
                &help("tollgatectl", &[&command, &nested]),
            );
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from README.md (document each as `--flag`):\n  {}",
        missing.join("\n  ")
    );
}
