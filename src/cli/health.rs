//! `trainyard healthcheck`: the container healthcheck, from the binary the image already
//! holds, so the slim runtime image needs no curl. It asks the server in this container
//! (the port of `--bind`, on loopback) for `GET /readyz`, which answers 200 only once the
//! database is migrated and reachable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The server's listening address; an unspecified one (0.0.0.0, [::]) is asked on
    /// loopback.
    #[arg(long, env = "TRAINYARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0, value_parser = super::seconds)]
    pub timeout_secs: f64,
}

/// The address to ask for a server listening on `bind`.
fn target(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

pub fn run(a: HealthcheckArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/readyz", target(a.bind));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs_f64(a.timeout_secs))
        .build();
    match agent.get(&url).call() {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => anyhow::bail!("{url} answered {}", r.status()),
        Err(ureq::Error::Status(code, _)) => anyhow::bail!("{url} answered {code}"),
        Err(e) => anyhow::bail!("{url}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_bind_address_is_asked_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(t("[::]:9000"), "[::1]:9000");
        assert_eq!(t("10.1.2.3:80"), "10.1.2.3:80");
    }
}
