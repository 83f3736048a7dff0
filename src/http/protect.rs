//! What every HTTP response is protected by, whatever its route.
//!
//! * **The Host check** ([`AllowedHosts`], [`check_host`]), against DNS
//!   rebinding: a web page on `evil.example` whose name is rebound to
//!   127.0.0.1 makes the browser send `Host: evil.example` to Pulse, and
//!   would otherwise read the analytics of a loopback server that has no
//!   keys. A request is served only when its host (the `Host` header, or the
//!   HTTP/2 `:authority`) is an IP address, `localhost`, or a name given
//!   with `--public-host`; anything else gets 403 `PERMISSION_DENIED` as
//!   JSON. IP addresses always pass because a rebinding page cannot make a
//!   browser send one: its origin, and so its Host, is the attacker's name.
//!   Ports are compared only when a `--public-host` entry names one (a
//!   proxy or a port mapping may change them).
//! * **Security headers** ([`security_headers`]) on every response: a
//!   Content-Security-Policy that allows exactly what the dashboard uses
//!   (its own script, stylesheet, icon and JSON API; `style` attributes,
//!   which its charts and bars set; nothing inline, nothing from elsewhere,
//!   never in a frame), `X-Frame-Options: DENY`,
//!   `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::api::ApiError;
use crate::error::{Error, Result};

/// The dashboard's policy: see the module doc. `style-src-attr` allows the
/// `style="…"` attributes the page's script writes (bar widths, legend
/// colours); `<style>` elements and inline scripts stay forbidden.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self'; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A host name or address as a request names it, without its port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    /// Lower-case, without a trailing dot; an IPv6 address without brackets.
    host: String,
    port: Option<u16>,
}

/// Splits `host[:port]` (`[v6]:port` for IPv6); `None` when malformed.
fn parse_host(text: &str) -> Option<HostPort> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        (v6, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (text, None),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    valid.then_some(HostPort { host, port })
}

/// The names the HTTP listener answers to besides IP addresses and
/// `localhost` (`--public-host`).
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    public: Vec<HostPort>,
}

impl AllowedHosts {
    /// Checks the `--public-host` entries (`name` or `name:port`).
    pub fn new(public: &[String]) -> Result<Self> {
        let public = public
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                parse_host(entry.trim()).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--public-host `{entry}` is not a host name or host:port"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { public })
    }

    /// True when a request naming `host` may be served.
    pub fn allows(&self, host: &str) -> bool {
        let Some(asked) = parse_host(host) else {
            return false;
        };
        asked.host.parse::<IpAddr>().is_ok()
            || asked.host == "localhost"
            || self
                .public
                .iter()
                .any(|p| p.host == asked.host && (p.port.is_none() || p.port == asked.port))
    }
}

/// Refuses requests whose Host is not allowed (see the module doc).
pub async fn check_host(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(host) if state.hosts.allows(&host) => next.run(request).await,
        Some(host) => ApiError::from(Error::PermissionDenied(format!(
            "this server does not answer to the name `{}`: if it is yours, add it with \
             --public-host (PULSE_PUBLIC_HOST); other names are refused against DNS rebinding",
            crate::text::escape_control(&host)
        )))
        .into_response(),
        None => ApiError::from(Error::PermissionDenied(
            "a request must name its host (the Host header)".into(),
        ))
        .into_response(),
    }
}

/// Adds the security headers to every response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_localhost_pass_other_names_only_when_configured() {
        let hosts =
            AllowedHosts::new(&["Pulse.Example.com".into(), "stats.internal:8443".into()]).unwrap();
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "10.1.2.3:80",
            "localhost:8080",
            "LOCALHOST",
            "localhost.",
            "pulse.example.com",
            "pulse.example.com:9000",
            "PULSE.EXAMPLE.COM.",
            "stats.internal:8443",
        ] {
            assert!(hosts.allows(ok), "{ok} refused");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "pulse.example.com.evil.example",
            "stats.internal",
            "stats.internal:8080",
            "",
            "[::1",
            "a b",
            "localhost:99999",
            "pulse.example.com\n",
        ] {
            assert!(!hosts.allows(bad), "{bad:?} allowed");
        }
        assert!(!AllowedHosts::default().allows("pulse.example.com"));
        assert!(AllowedHosts::new(&["not a host".into()]).is_err());
        assert!(AllowedHosts::new(&["x:notaport".into()]).is_err());
    }
}
