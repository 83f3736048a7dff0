//! Keeping secrets out of what Pulse prints.
//!
//! A database URL may carry a password (`postgres://user:secret@host/db`).
//! Invariant: no such password reaches the help text (the settings use
//! clap's `hide_env_values`), a log line or an error message; whatever
//! prints a URL, or text that might quote one, passes it through here first.

/// Replaces the password of every `scheme://user:password@` in `text` with
/// `***`; the rest is unchanged, so host, port and database stay readable.
pub fn secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first `/`, `?`, `#` or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                let userinfo = &authority[..user_end];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::secrets;

    #[test]
    fn passwords_are_hidden_and_everything_else_kept() {
        assert_eq!(
            secrets("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            secrets("cannot reach postgres://u:p%40ss@h/db, nor postgresql://v:x@k"),
            "cannot reach postgres://u:***@h/db, nor postgresql://v:***@k"
        );
        // A password holding `@` or `:` (not percent-encoded) is hidden whole.
        assert_eq!(secrets("postgres://u:a:b@c@h/db"), "postgres://u:***@h/db");
        for unchanged in [
            "postgres://postgres@127.0.0.1:5432/pulse",
            "http://127.0.0.1:8080/metrics?x=a@b",
            "no url here",
            "",
            "trailing ://",
        ] {
            assert_eq!(secrets(unchanged), unchanged);
        }
    }
}
