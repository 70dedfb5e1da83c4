//! Outgoing HTTP to addresses callers chose (webhook receivers, later callbacks and remote
//! servers): one client that follows no redirects, uses no proxy from the environment and,
//! unless private networks are allowed, connects only to public addresses, checked on
//! every connection (a name that resolves to 10.0.0.1 or 169.254.169.254 is refused at
//! delivery time, not only when the URL was saved).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// May outgoing calls reach loopback and private networks? On the embedded default (one
/// person's machine) yes; on a shared deployment only when the operator says so.
#[derive(Debug, Clone, Copy)]
pub struct OutboundOptions {
    pub allow_private: bool,
    /// Per request: connecting, sending and reading the response status.
    pub timeout: Duration,
}

/// Checks a URL a caller wants the server to call: http(s), a host, no credentials in it
/// (they would be shown back in lists), and a public address unless private ones are allowed.
pub fn check_url(url: &str, options: OutboundOptions) -> Result<Url, String> {
    let parsed = Url::parse(url.trim()).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the URL must start with https:// or http://".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "the URL must not carry credentials; the receiver verifies the signature instead"
                .into(),
        );
    }
    let Some(host) = parsed.host_str() else {
        return Err("the URL has no host".into());
    };
    if !options.allow_private {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let private = match host.parse::<IpAddr>() {
            Ok(ip) => !is_public(ip),
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        };
        if private {
            return Err(
                "the URL points at a loopback or private network address, which this server \
                 does not call (an operator can allow it with AGENTCRM_OUTBOUND_ALLOW_PRIVATE=true)"
                    .into(),
            );
        }
    }
    Ok(parsed)
}

/// The shared client for outgoing calls.
pub fn client(options: OutboundOptions) -> Result<reqwest::Client, reqwest::Error> {
    // rustls needs a process-wide provider; a second install is refused, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("agentcrm/", env!("CARGO_PKG_VERSION")));
    if !options.allow_private {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build()
}

/// Outgoing clients built once per process on first use: one with the configured
/// timeout, and one for LLM providers, whose answers take longer than a webhook's (a run's
/// own guardrail bounds them).
#[derive(Default)]
pub struct Clients {
    standard: std::sync::OnceLock<reqwest::Client>,
    llm: std::sync::OnceLock<reqwest::Client>,
}

/// How long one LLM request may take at most, whatever the agent's guardrail.
pub const LLM_TIMEOUT: Duration = Duration::from_secs(300);

impl Clients {
    pub fn standard(&self, options: OutboundOptions) -> Result<reqwest::Client, reqwest::Error> {
        Self::get(&self.standard, options)
    }

    pub fn llm(&self, options: OutboundOptions) -> Result<reqwest::Client, reqwest::Error> {
        let options = OutboundOptions {
            timeout: LLM_TIMEOUT,
            ..options
        };
        Self::get(&self.llm, options)
    }

    fn get(
        cell: &std::sync::OnceLock<reqwest::Client>,
        options: OutboundOptions,
    ) -> Result<reqwest::Client, reqwest::Error> {
        if let Some(client) = cell.get() {
            return Ok(client.clone());
        }
        let client = client(options)?;
        Ok(cell.get_or_init(|| client).clone())
    }
}

/// Resolves names to their public addresses only.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Not loopback, private, link-local (cloud metadata), shared, documentation, multicast or
/// otherwise special.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || first == 0x0064)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: OutboundOptions = OutboundOptions {
        allow_private: false,
        timeout: Duration::from_secs(1),
    };

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_before_they_are_saved() {
        assert!(check_url("https://hooks.example.com/in", SHARED).is_ok());
        for bad in [
            "ftp://example.com/x",
            "not a url",
            "https://user:pw@example.com/x",
            "http://127.0.0.1:9000/x",
            "http://[::1]/x",
            "http://localhost:8080/x",
            "http://api.localhost/x",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(check_url(bad, SHARED).is_err(), "{bad}");
        }
        let local = OutboundOptions {
            allow_private: true,
            ..SHARED
        };
        assert!(check_url("http://127.0.0.1:9000/x", local).is_ok());
        assert!(check_url("https://user:pw@example.com/x", local).is_err());
    }
}
