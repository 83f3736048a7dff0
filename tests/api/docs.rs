//! The README is the front door: small, every setting in its table, links
//! that resolve inside the repository, and a first-steps block that works
//! as pasted against a fresh server.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, grpcurl, require};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Markdown files a reader of the repository meets.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md"), repo().join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_readme_is_small_and_every_link_stays_inside_the_repository() {
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.len() <= 10 * 1024,
        "README.md is {} bytes; the front door stays under 10 KB (details go to docs/)",
        readme.len()
    );
    let architecture = read(&repo().join("ARCHITECTURE.md"));
    assert!(
        architecture.len() <= 15 * 1024,
        "ARCHITECTURE.md is {} bytes; it stays under 15 KB (depth goes to docs/internals.md)",
        architecture.len()
    );
    for file in documents() {
        let text = read(&file);
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        assert!(
            !text.contains("shared/SPEC") && !text.contains("../shared"),
            "{name} refers to a file outside the repository"
        );
        // Inline links `[text](target)`.
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let target = rest.split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.starts_with("http://127.0.0.1") {
                continue;
            }
            assert!(
                !target.contains("://") && !target.starts_with('/'),
                "{name} links outside the repository: {target}"
            );
            let resolved = file.parent().unwrap().join(target);
            assert!(
                resolved.exists(),
                "{name} links to {target}, which does not exist"
            );
            assert!(
                resolved
                    .canonicalize()
                    .unwrap()
                    .starts_with(repo().canonicalize().unwrap()),
                "{name} links outside the repository: {target}"
            );
        }
    }
}

/// Every `--flag` and `[env: NAME]` in `pulse <args> --help`.
fn help_settings(args: &[&str]) -> (Vec<String>, Vec<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .arg("--help")
        .output()
        .expect("pulse --help runs");
    let help = String::from_utf8_lossy(&output.stdout);
    let mut flags = Vec::new();
    let mut envs = Vec::new();
    for line in help.lines() {
        let line = line.trim_start();
        if let Some(flag) = line
            .strip_prefix("--")
            .and_then(|f| f.split([' ', ',', '=']).next())
            .filter(|f| !f.is_empty())
        {
            flags.push(format!("--{flag}"));
        }
        for part in line.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            envs.push(name);
        }
    }
    flags.retain(|f| f != "--help" && f != "--version");
    (flags, envs)
}

#[test]
fn every_setting_with_an_environment_variable_is_in_the_readme_table() {
    let readme = read(&repo().join("README.md"));
    let (_, table) = readme
        .split_once("## Configuration")
        .expect("a Configuration section");
    let (serve_flags, _) = help_settings(&["serve"]);
    assert!(serve_flags.len() > 20, "{serve_flags:?}");
    for flag in serve_flags {
        assert!(
            table.contains(&format!("`{flag}`")),
            "`pulse serve {flag}` is missing from the README's configuration table"
        );
    }
    for command in [
        &["serve"][..],
        &["loadgen"],
        &["demo"],
        &["bench-queries"],
        &["keys", "create"],
        &["migrate", "run"],
    ] {
        let (_, envs) = help_settings(command);
        assert!(!envs.is_empty(), "{command:?}");
        for env in envs {
            assert!(
                table.contains(&format!("`{env}`")),
                "{env} (pulse {command:?}) is missing from the README's configuration table"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_first_steps_work_as_pasted_against_a_fresh_server() {
    let readme = read(&repo().join("README.md"));
    let block = readme
        .split_once("<!-- readme-tour -->\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block.to_owned())
        .expect("the first-steps block after <!-- readme-tour -->");
    let grpcurl = grpcurl();
    require("curl", Command::new("curl").arg("--version"));
    let app = TestApp::spawn().await;
    // The README's addresses are the defaults; the test server's ports differ.
    let script = block
        .replace("127.0.0.1:50051", &app.grpc_addr.to_string())
        .replace("127.0.0.1:8080", &app.http_addr.to_string());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c"])
            .arg(format!(
                "grpcurl() {{ command \"$GRPCURL\" \"$@\"; }}\n{script}"
            ))
            .env("GRPCURL", grpcurl)
            .output()
            .expect("bash runs")
    })
    .await
    .expect("the script ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "pulse.v1.IngestService",
        r#""accepted": "2""#,
        // -emit-defaults: zero counts are printed, not left out.
        r#""duplicates": "0""#,
        r#""group": "pageview""#,
        r#""group": "purchase""#,
        r#""total": 1"#,
        r#""group":"pageview""#,
        r#""status":"ready""#,
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
}
