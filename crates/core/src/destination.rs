//! Where Herald may send webhooks: the outbound address policy that keeps
//! endpoint URLs from reaching into the network Herald runs in (server-side
//! request forgery).
//!
//! By default Herald refuses every address that is not on the public
//! internet: loopback, private (RFC 1918, unique-local IPv6), link-local
//! (including the cloud metadata address 169.254.169.254), shared CGNAT
//! space, multicast, broadcast, unspecified, reserved and documentation
//! ranges. IPv6 addresses that carry an IPv4 address (IPv4-mapped,
//! IPv4-compatible, IPv4-translated, NAT64 `64:ff9b::/96` and 6to4) are
//! judged by the IPv4 address inside them. `HERALD_ALLOWED_DESTINATION_CIDRS`
//! opens specific ranges again.
//!
//! The policy is applied twice: herald-ingest checks a URL when an endpoint
//! is registered or changed (resolving its host name), and the dispatchers
//! check the address they actually connect to, after their own resolution,
//! so a name that resolves differently later (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::{ConfigError, Env};

/// The variable that opens address ranges.
pub const ALLOW_VAR: &str = "HERALD_ALLOWED_DESTINATION_CIDRS";

/// Why Herald will not send a request to a destination, in words meant for
/// API answers, logs and dead letters, e.g. `127.0.0.1 is a loopback address
/// (127.0.0.0/8), not a webhook destination unless
/// HERALD_ALLOWED_DESTINATION_CIDRS includes it`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DestinationRefused(pub String);

/// The outbound address policy.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// `HERALD_ALLOWED_DESTINATION_CIDRS` (default none): ranges that are
    /// allowed even though they are not public, e.g.
    /// `10.20.0.0/16,127.0.0.1/32`.
    pub allowed: Vec<IpNet>,
    /// `HERALD_REQUIRE_HTTPS` (default `false`): refuse `http://` URLs at
    /// registration and at delivery.
    pub require_https: bool,
}

impl DestinationPolicy {
    /// Reads `HERALD_ALLOWED_DESTINATION_CIDRS` and `HERALD_REQUIRE_HTTPS`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let allowed = env.parse(ALLOW_VAR, Vec::new(), parse_cidrs)?;
        Ok(Self {
            allowed,
            require_https: env.boolean("HERALD_REQUIRE_HTTPS", false)?,
        })
    }

    /// Whether Herald may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), DestinationRefused> {
        let inner = embedded_ipv4(ip).map(IpAddr::V4);
        let allowed = |candidate: IpAddr| self.allowed.iter().any(|net| net.contains(&candidate));
        if allowed(ip) || inner.is_some_and(allowed) {
            return Ok(());
        }
        match describe_forbidden(ip) {
            None => Ok(()),
            Some(what) => Err(DestinationRefused(format!(
                "{what}, not a webhook destination unless {ALLOW_VAR} includes it"
            ))),
        }
    }

    /// Checks what can be checked without resolving anything: the scheme
    /// (when HTTPS is required) and a host written as an IP address
    /// (including the decimal, octal and hexadecimal IPv4 spellings, which
    /// URL parsing turns into ordinary addresses).
    pub fn check_url(&self, url: &url::Url) -> Result<(), DestinationRefused> {
        if self.require_https && url.scheme() != "https" {
            return Err(DestinationRefused(format!(
                "uses {}, but Herald delivers only over https (HERALD_REQUIRE_HTTPS is set)",
                url.scheme()
            )));
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }

    /// The addresses of `addrs` Herald may connect to; refused when there
    /// is none, naming the first forbidden one.
    pub fn filter(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, DestinationRefused> {
        let mut first_refusal = None;
        let mut usable = Vec::new();
        for addr in addrs {
            match self.check_ip(addr.ip()) {
                Ok(()) => usable.push(addr),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match (usable.is_empty(), first_refusal) {
            (true, Some(refused)) => Err(DestinationRefused(format!(
                "{host} resolves only to refused addresses: {refused}"
            ))),
            (true, None) => Err(DestinationRefused(format!("{host} resolves to no address"))),
            (false, _) => Ok(usable),
        }
    }

    /// The registration check of an endpoint URL: [`check_url`], then, for a
    /// host name, every address it resolves to right now must be allowed. A
    /// name that does not resolve (yet) within `timeout` passes: the
    /// dispatchers check the address again at every connection.
    ///
    /// [`check_url`]: DestinationPolicy::check_url
    pub async fn check_registration(
        &self,
        url: &url::Url,
        timeout: Duration,
    ) -> Result<(), DestinationRefused> {
        self.check_url(url)?;
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let resolved = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await;
        let Ok(Ok(addrs)) = resolved else {
            return Ok(());
        };
        for addr in addrs {
            self.check_ip(addr.ip()).map_err(|refused| {
                DestinationRefused(format!("{host} resolves to a refused address: {refused}"))
            })?;
        }
        Ok(())
    }
}

/// Reads a comma-separated list of CIDRs; a bare address means that address
/// alone.
pub fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{item:?} is not a CIDR; write ranges like 10.0.0.0/8 or fd00::/8, comma-separated")
                })
        })
        .collect()
}

/// The ranges Herald refuses, with how a refusal names them.
fn forbidden_ranges() -> &'static [(IpNet, &'static str)] {
    static RANGES: OnceLock<Vec<(IpNet, &'static str)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        [
            // More specific ranges first: the first match names the refusal.
            ("0.0.0.0/32", "the unspecified address"),
            ("0.0.0.0/8", "a \"this network\" address"),
            ("10.0.0.0/8", "a private address (RFC 1918)"),
            ("100.64.0.0/10", "a shared carrier-grade NAT address"),
            ("127.0.0.0/8", "a loopback address"),
            (
                "169.254.169.254/32",
                "the link-local cloud metadata address",
            ),
            ("169.254.0.0/16", "a link-local address"),
            ("172.16.0.0/12", "a private address (RFC 1918)"),
            ("192.0.0.0/24", "an IETF protocol assignment address"),
            ("192.0.2.0/24", "a documentation address"),
            ("192.88.99.0/24", "a 6to4 relay anycast address"),
            ("192.168.0.0/16", "a private address (RFC 1918)"),
            ("198.18.0.0/15", "a benchmarking address"),
            ("198.51.100.0/24", "a documentation address"),
            ("203.0.113.0/24", "a documentation address"),
            ("224.0.0.0/4", "a multicast address"),
            ("255.255.255.255/32", "the broadcast address"),
            ("240.0.0.0/4", "a reserved address"),
            ("::/128", "the unspecified address"),
            ("::1/128", "a loopback address"),
            ("64:ff9b:1::/48", "a local-use NAT64 address"),
            ("100::/64", "a discard-only address"),
            ("2001::/32", "a Teredo tunnel address"),
            ("2001:db8::/32", "a documentation address"),
            ("fc00::/7", "a unique-local address"),
            ("fe80::/10", "a link-local address"),
            ("fec0::/10", "a site-local address"),
            ("ff00::/8", "a multicast address"),
        ]
        .into_iter()
        .map(|(net, what)| (net.parse().expect("a valid built-in range"), what))
        .collect()
    })
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms
/// that carry one: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`
/// and 6to4 `2002:aabb:ccdd::`.
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let last_two = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last_two()),
        // ::/128 and ::1/128 are IPv6's own unspecified and loopback.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(last_two()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last_two()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Why `ip` is not a public address, or `None` when it is one.
fn describe_forbidden(ip: IpAddr) -> Option<String> {
    let range_of = |ip: IpAddr| forbidden_ranges().iter().find(|(net, _)| net.contains(&ip));
    if let Some(v4) = embedded_ipv4(ip) {
        return range_of(IpAddr::V4(v4))
            .map(|(net, what)| format!("{ip} stands for {v4}, which is {what} ({net})"));
    }
    range_of(ip).map(|(net, what)| format!("{ip} is {what} ({net})"))
}

/// Whether `ip` is in one of the ranges refused by default (ignoring any
/// allowed ranges).
pub fn is_public(ip: IpAddr) -> bool {
    describe_forbidden(ip).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &DestinationPolicy, url: &str) -> Option<String> {
        let url = url::Url::parse(url).unwrap();
        policy.check_url(&url).err().map(|r| r.0)
    }

    #[test]
    fn every_non_public_range_is_refused_by_default() {
        let policy = DestinationPolicy::default();
        for (ip, needle) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            (
                "::ffff:127.0.0.1",
                "stands for 127.0.0.1, which is a loopback",
            ),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:0:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "stands for 10.0.0.1"),
            ("2002:7f00:1::", "stands for 127.0.0.1"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let err = policy.check_ip(ip).unwrap_err().0;
            assert!(err.contains(needle), "{ip}: {err}");
            assert!(!is_public(ip));
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(policy.check_ip(ip), Ok(()), "{ip}");
        }
        // Just outside the private and CGNAT ranges.
        for ip in ["172.32.0.1", "100.128.0.1", "11.0.0.1", "192.169.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn other_spellings_of_an_address_are_caught() {
        let policy = DestinationPolicy::default();
        for url in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://017700000001/",
            "http://127.0.0.1./",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]/",
            "http://[::1]:8080/",
            "http://0/",
            "https://user:pw@10.0.0.1/",
        ] {
            assert!(refused(&policy, url).is_some(), "{url} was not refused");
        }
        assert_eq!(refused(&policy, "https://example.com/hook"), None);
    }

    #[test]
    fn allowed_ranges_open_exactly_what_they_name() {
        let policy = DestinationPolicy {
            allowed: parse_cidrs("127.0.0.1/32, ::1, 10.20.0.0/16").unwrap(),
            require_https: false,
        };
        assert_eq!(policy.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check_ip("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check_ip("::1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check_ip("10.20.3.4".parse().unwrap()), Ok(()));
        assert!(policy.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(policy.check_ip("10.21.0.1".parse().unwrap()).is_err());
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("localhost").unwrap_err().contains("not a CIDR"));
    }

    #[test]
    fn filtering_keeps_the_allowed_addresses() {
        let policy = DestinationPolicy::default();
        let public: SocketAddr = "8.8.8.8:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(policy.filter("h", [private, public]), Ok(vec![public]));
        let err = policy.filter("h", [private]).unwrap_err().0;
        assert!(
            err.starts_with("h resolves only to refused addresses: 10.0.0.1 is a private"),
            "{err}"
        );
        assert!(err.contains(ALLOW_VAR), "{err}");
    }

    #[test]
    fn https_can_be_required() {
        let policy = DestinationPolicy {
            allowed: Vec::new(),
            require_https: true,
        };
        assert!(
            refused(&policy, "http://example.com/")
                .unwrap()
                .contains("only over https")
        );
        assert_eq!(refused(&policy, "https://example.com/"), None);
    }

    #[tokio::test]
    async fn registration_resolves_host_names() {
        let policy = DestinationPolicy::default();
        let url = url::Url::parse("http://localhost:9/").unwrap();
        let err = policy
            .check_registration(&url, Duration::from_secs(2))
            .await
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("localhost resolves to a refused address"),
            "{err}"
        );
        assert!(err.contains("loopback"), "{err}");
        let open = DestinationPolicy {
            allowed: parse_cidrs("127.0.0.0/8,::1/128").unwrap(),
            require_https: false,
        };
        assert_eq!(
            open.check_registration(&url, Duration::from_secs(2)).await,
            Ok(())
        );
        // A name that does not resolve passes; delivery checks again.
        let unknown = url::Url::parse("https://no-such-host.invalid/").unwrap();
        assert_eq!(
            policy
                .check_registration(&unknown, Duration::from_secs(2))
                .await,
            Ok(())
        );
    }
}
