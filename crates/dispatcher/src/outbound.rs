//! The webhook HTTP client, and the checks on where it may connect.
//!
//! Every address the client connects to passes the outbound address policy
//! ([`herald_core::destination`]) at the moment of connecting:
//!
//! - host names go through [`GuardedResolver`], which drops refused
//!   addresses from what DNS answered (and fails when none is left), so a
//!   name that passed registration but resolves to an internal address now
//!   (DNS rebinding) is not reached;
//! - a URL whose host is an IP address never reaches a resolver, so
//!   [`Outbound::preflight`] checks it before the request is made, together
//!   with the scheme when `HERALD_REQUIRE_HTTPS` is set;
//! - through `HERALD_OUTBOUND_PROXY` the client resolves only the proxy's
//!   name, and the proxy the destination's. The preflight then resolves the
//!   destination itself and refuses it unless every address is allowed.
//!   The proxy resolves it again, so it should enforce an egress policy of
//!   its own too.
//!
//! Environment proxy variables (`HTTP_PROXY`, …) are ignored: they would
//! route around these checks.

use std::sync::Arc;
use std::time::Duration;

use herald_core::destination::{DestinationPolicy, DestinationRefused};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::Config;

/// How long the preflight waits for a destination to resolve (proxy only).
const PREFLIGHT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The webhook client with its address policy.
#[derive(Debug)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    proxied: bool,
    timeout: Duration,
}

impl Outbound {
    /// Builds the client: pooled connections, no redirects, the configured
    /// proxy or none, and the guarded resolver. The whole exchange's time
    /// limit ([`Outbound::timeout`]) is kept by the caller: the client's
    /// own would box a timer for every request and wrap every body.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(config.destinations.clone());
        let builder = reqwest::Client::builder()
            .connect_timeout(config.http_timeout.min(Duration::from_secs(10)))
            // A redirect is an answer that is not 2xx: following it would
            // send the signed payload somewhere nobody registered.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60));
        let builder = match &config.outbound_proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.as_str())?),
            None => builder.no_proxy().dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            })),
        };
        Ok(Self {
            client: builder.build()?,
            policy,
            proxied: config.outbound_proxy.is_some(),
            timeout: config.http_timeout,
        })
    }

    /// How long one webhook request may take, from connecting to the end
    /// of the response (`HERALD_HTTP_TIMEOUT`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The checks that must pass before a request to `parsed` is made.
    pub async fn preflight(&self, parsed: &reqwest::Url) -> Result<(), DestinationRefused> {
        self.policy.check_url(parsed)?;
        if self.proxied
            && let Some(url::Host::Domain(host)) = parsed.host()
        {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let resolved = tokio::time::timeout(
                PREFLIGHT_RESOLVE_TIMEOUT,
                tokio::net::lookup_host((host, port)),
            )
            .await;
            let addrs: Vec<_> = match resolved {
                Ok(Ok(addrs)) => addrs.collect(),
                // The proxy may well resolve names Herald cannot; without an
                // address there is nothing to judge.
                _ => return Ok(()),
            };
            for addr in addrs {
                self.policy.check_ip(addr.ip()).map_err(|refused| {
                    DestinationRefused(format!("{host} resolves to a refused address: {refused}"))
                })?;
            }
        }
        Ok(())
    }
}

/// The refusal inside a failed request, if the address policy stopped it.
pub fn refusal_of(err: &reqwest::Error) -> Option<DestinationRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<DestinationRefused>() {
            return Some(refused.clone());
        }
        source = current.source();
    }
    None
}

/// Resolves with the system resolver, then keeps only the addresses the
/// policy allows.
#[derive(Debug)]
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts in the URL's port.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = policy.filter(&host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::Env;

    fn outbound(pairs: &[(&str, &str)]) -> Outbound {
        let config = Config::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap();
        Outbound::new(&config).unwrap()
    }

    fn parsed(url: &str) -> reqwest::Url {
        reqwest::Url::parse(url).unwrap()
    }

    /// A listener that would accept the request if the client got through.
    async fn listener() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let (_listener, port) = listener().await;
        let out = outbound(&[]);
        let url = format!("http://localhost:{port}/hook");
        // Names are not resolved by the preflight without a proxy...
        assert_eq!(out.preflight(&parsed(&url)).await, Ok(()));
        // ...but by the client, which refuses the address it got.
        let err = out.client().post(&url).send().await.unwrap_err();
        let refused = refusal_of(&err).expect("the refusal is in the error chain");
        assert!(refused.0.contains("loopback"), "{refused}");
    }

    #[tokio::test]
    async fn allowed_ranges_are_reached() {
        let (listener, port) = listener().await;
        let out = outbound(&[("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8,::1")]);
        let accept = tokio::spawn(async move { listener.accept().await.is_ok() });
        let url = format!("http://localhost:{port}/hook");
        // The listener hangs up at once: the request fails, but only after
        // it connected.
        let err = out.client().post(&url).send().await.unwrap_err();
        assert!(refusal_of(&err).is_none(), "{err}");
        assert!(accept.await.unwrap());
    }

    #[tokio::test]
    async fn ip_literals_and_plain_http_are_refused_before_sending() {
        let out = outbound(&[("HERALD_REQUIRE_HTTPS", "true")]);
        for (url, needle) in [
            ("https://127.0.0.1/", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://[::ffff:169.254.169.254]/", "metadata"),
            ("https://10.0.0.1:8443/", "private"),
            ("http://example.com/", "only over https"),
        ] {
            let refused = out.preflight(&parsed(url)).await.unwrap_err();
            assert!(refused.0.contains(needle), "{url}: {refused}");
        }
        assert_eq!(out.preflight(&parsed("https://example.com/")).await, Ok(()));
    }

    #[tokio::test]
    async fn through_a_proxy_the_preflight_resolves_the_destination() {
        let out = outbound(&[("HERALD_OUTBOUND_PROXY", "http://127.0.0.1:3128")]);
        let refused = out
            .preflight(&parsed("http://localhost/hook"))
            .await
            .unwrap_err();
        assert!(
            refused
                .0
                .starts_with("localhost resolves to a refused address")
        );
    }
}
