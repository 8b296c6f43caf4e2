//! Routes: the relays saved in a profile, the route that worked last, and
//! `ponte status` (the race's winner and each route checked on its own).

use super::{Client, META_LAST_ROUTE};
use crate::connection::Connection;
use crate::route::{RelayUrl, Route, HEAD_START};
use crate::store::Store;
use crate::{ClientError, Report, Result};
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

/// Profile meta key: the saved relays, one URL per line.
const META_VIAS: &str = "vias";
/// Most relays saved in a profile.
pub const MAX_SAVED_VIAS: usize = 32;

/// The relays saved in a profile (`ponte via add`), in the order added.
pub fn saved_vias(store: &Store) -> Result<Vec<RelayUrl>> {
    let Some(text) = store.meta(META_VIAS)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.parse::<RelayUrl>()
                .map_err(|_| ClientError::Corrupt("saved relay list"))
        })
        .collect()
}

/// Replace the relays saved in a profile (duplicates dropped, order kept).
pub fn save_vias(store: &Store, vias: &[RelayUrl]) -> Result<()> {
    let mut seen = BTreeSet::new();
    let list: Vec<String> = vias
        .iter()
        .filter(|v| seen.insert((*v).clone()))
        .map(ToString::to_string)
        .collect();
    if list.len() > MAX_SAVED_VIAS {
        return Err(ClientError::Invalid(format!(
            "at most {MAX_SAVED_VIAS} relays can be saved"
        )));
    }
    store.set_meta(META_VIAS, &list.join("\n"))
}

/// The route that worked last, as recorded in the profile.
pub fn last_route(store: &Store) -> Result<Option<String>> {
    Ok(store.meta(META_LAST_ROUTE)?.filter(|r| !r.is_empty()))
}

/// One route checked on its own (for `ponte status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteProbe {
    /// The route ([`Route::describe`]).
    pub route: String,
    /// `Ok(milliseconds to an authenticated channel)` or the reason it failed.
    pub result: std::result::Result<u64, String>,
}

/// What `ponte status` shows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteStatus {
    /// The route the client would use now (the race's winner), or why none works.
    pub in_use: std::result::Result<String, String>,
    /// The route recorded as working last, before this check.
    pub last_route: Option<String>,
    /// Each route on its own, in the order they are tried.
    pub probes: Vec<RouteProbe>,
    /// No route could be used because of a security error (the server at
    /// the address holds another key, a route tampered with the handshake;
    /// the text is in `in_use`): report it as an error, not only as a
    /// failed route.
    pub refused: bool,
}

impl Client {
    /// Which route works now: the race's winner, and each route alone.
    pub async fn status(&mut self) -> Result<RouteStatus> {
        let last = last_route(self.store())?;
        let built;
        let routes = match &self.custom_routes {
            Some(r) => r,
            None => {
                built = self.build_routes()?;
                &built
            }
        };
        let handshake = self.handshake()?;
        let probes = futures::future::join_all(routes.iter().map(|r| {
            let device = self.device.clone();
            let (key, timeout) = (self.server.key, self.connect_timeout);
            async move {
                let t0 = tokio::time::Instant::now();
                let one = std::slice::from_ref(r);
                let result =
                    Connection::open_with(one, key, device, timeout, HEAD_START, handshake)
                        .await
                        .map(|_| u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX))
                        .map_err(|e| match e {
                            ClientError::Unreachable(m) => m,
                            other => Report(&other).to_string(),
                        });
                RouteProbe {
                    route: r.describe(),
                    result,
                }
            }
        }))
        .await;
        let in_use = Connection::open_with(
            routes,
            self.server.key,
            self.device.clone(),
            self.connect_timeout,
            HEAD_START,
            handshake,
        )
        .await
        .map(|c| c.route().to_owned());
        if let Ok(route) = &in_use {
            self.reached(handshake)?;
            self.remember_route(route)?;
            self.route_in_use = Some(route.clone());
        }
        let (in_use, refused) = match in_use {
            Ok(r) => (Ok(r), false),
            Err(e) => (
                Err(Report(&e).to_string()),
                crate::route::is_security_error(&e),
            ),
        };
        Ok(RouteStatus {
            in_use,
            last_route: last,
            probes,
            refused,
        })
    }

    /// A future that tells whether the direct route reaches the server and
    /// completes the Noise handshake now (the probe connection is dropped).
    pub(super) fn probe_direct(&self) -> impl Future<Output = bool> + Send + 'static {
        let direct: Vec<Box<dyn Route>> = vec![Box::new(self.direct_route())];
        let (key, device) = (self.server.key, self.device.clone());
        let timeout = self.connect_timeout.min(Duration::from_secs(5));
        async move {
            match Connection::open(&direct, key, device, timeout).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "direct route still unusable");
                    false
                }
            }
        }
    }
}
