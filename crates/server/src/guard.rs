//! What stands between a client and the job queue: bounded body reading (413
//! before buffering, 408 when the body trickles), a memory budget shared by all
//! bodies being read, per-client rate limits that trust `X-Forwarded-For` only
//! from configured proxies, and the admin token.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http_body_util::BodyExt;
use runbox_core::ErrorCode;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Bytes of request bodies all clients together may have buffered at once, in
/// units of 1 KiB permits: eight bodies of the maximum size by default. A body
/// waits for room rather than pushing memory past it.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    max_body: usize,
    timeout: Duration,
}

const UNIT: usize = 1024;

impl BodyBudget {
    pub fn new(max_body: usize, total: usize, timeout: Duration) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(total.div_ceil(UNIT))),
            max_body,
            timeout,
        }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Reads a whole body: refused with 413 when its declared length (before
    /// reading anything) or its actual length is over the limit, and with 408 when
    /// it does not arrive within the body timeout.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, OwnedSemaphorePermit), ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared {
            if n > self.max_body as u64 {
                return Err(too_large(n, self.max_body));
            }
        }
        let expect = declared.map_or(self.max_body, |n| n as usize);
        let units = (expect.div_ceil(UNIT)).max(1) as u32;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit =
            tokio::time::timeout_at(deadline, self.permits.clone().acquire_many_owned(units))
                .await
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::QueueFull,
                        "the server is busy reading other uploads; retry shortly",
                    )
                    .retry_after(2)
                })?
                .map_err(ApiError::internal)?;
        let mut buf = BytesMut::with_capacity(expect.min(1 << 20));
        let mut body = body;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::RequestTimeout,
                        format!(
                            "the request body did not arrive within {} s",
                            self.timeout.as_secs()
                        ),
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(format!(
                        "reading the request body: {e}"
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > self.max_body.min(expect) {
                    return Err(too_large((buf.len() + data.len()) as u64, self.max_body));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((buf.freeze(), permit))
    }
}

fn too_large(n: u64, max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is {n} bytes or more, over the limit of {max} bytes"),
    )
}

/// The address a request is counted against: the peer, or, when the peer is a
/// trusted proxy, the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (each proxy appends the address it received the request from,
/// so the entries to the right are the ones proxies we trust wrote).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage from the client side of a proxy: count against the proxy.
            Err(_) => return peer,
        }
    }
    peer
}

/// Per-client limits on job submissions (a token bucket per address).
#[derive(Debug)]
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl RateLimit {
    /// `per_minute` submissions a minute with bursts of `burst`; 0 disables.
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        RateLimit { limiter }
    }

    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + 1;
            ApiError::new(
                ErrorCode::RateLimited,
                format!("too many jobs from {client}; retry in {secs} s"),
            )
            .retry_after(secs)
        })
    }

    /// Forgets clients whose buckets are full again (bounds the table).
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Checks `Authorization: Bearer TOKEN` against the admin token, in constant time.
pub fn require_admin(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(ErrorCode::Unauthorized, "the admin token is wrong")),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this is an admin endpoint: send Authorization: Bearer TOKEN (the token is in the server's admin-token file)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let h = xff("198.51.100.7");
        assert_eq!(client_ip(peer, &h, &[]), peer);
        assert_eq!(client_ip(peer, &h, &[proxy]), peer);
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A client prepending its own entries cannot choose its address: the
        // rightmost untrusted entry is the one the trusted proxy saw.
        let h = xff("1.2.3.4, 198.51.100.7");
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = xff("1.2.3.4, 198.51.100.7, 10.0.0.2");
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &[proxy, two]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &xff("garbage"), &[proxy]), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn the_admin_token_must_match() {
        let mut h = HeaderMap::new();
        assert!(require_admin(&h, "s3cret").is_err());
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(require_admin(&h, "s3cret").is_err());
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(require_admin(&h, "s3cret").is_ok());
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_per_client() {
        let r = RateLimit::new(60, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(r.check(a).is_ok());
        assert!(r.check(a).is_ok());
        let e = r.check(a).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after.unwrap() >= 1);
        assert!(r.check(b).is_ok(), "another client has its own bucket");
        assert!(RateLimit::new(0, 0).check(a).is_ok());
    }
}
