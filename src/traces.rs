//! Reading the decision log over HTTP (`GET /v1/traces`, DOMAIN.md T3): the query
//! parameters, and the `read_traces` requests that decide which partners' traces
//! the caller may see. The Cdap backend vouches for the caller with two headers:
//! `X-Cdap-Principal` names the authenticated user (e.g. `User::"mau-admin"`) and
//! `X-Cdap-Authentication` says how they authenticated (the context's
//! `authentication`, e.g. `password`), so that the policies on authentication (H6)
//! apply to trace reads as to every other action. Either one missing, or sent more
//! than once (which one would count?), is a 400.

use cedar_policy::{EntityUid, EvalResult};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::api::{parse_entity_ref, AuthzRequest, RequestError, WireContext};
use crate::audit::query::{decision_filter, entity_filter, partner_reference, Filter};
use crate::slice::stored_entity_ref;
use crate::snapshot::Snapshot;

/// The header naming the caller.
pub const CALLER_HEADER: &str = "x-cdap-principal";
/// The header saying how the caller authenticated.
pub const AUTHENTICATION_HEADER: &str = "x-cdap-authentication";
/// Records returned when the request sets no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records one request may ask for.
pub const MAX_LIMIT: usize = 1000;

/// A parsed `GET /v1/traces` request.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    pub caller: EntityUid,
    /// How the caller authenticated (`authentication` in the `read_traces` context).
    pub authentication: String,
    /// The partner whose traces are asked for; `None`: all the caller may read.
    pub partner: Option<PartnerWanted>,
    pub filter: Filter,
    pub limit: usize,
}

/// The partner a trace query names: by reference, type included, or by id.
#[derive(Debug, Clone, PartialEq)]
pub enum PartnerWanted {
    Reference(EntityUid),
    Id(String),
}

impl PartnerWanted {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match partner_reference(value)? {
            Some(uid) => Self::Reference(uid),
            None => Self::Id(value.to_owned()),
        })
    }

    fn is(&self, partner: &EntityUid) -> bool {
        match self {
            Self::Reference(wanted) => wanted == partner,
            Self::Id(id) => id == partner.id().unescaped(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceQueryError {
    #[error("missing the {CALLER_HEADER} header naming the caller")]
    NoCaller,
    #[error("missing the {AUTHENTICATION_HEADER} header saying how the caller authenticated")]
    NoAuthentication,
    #[error("the {0} header is sent more than once")]
    RepeatedHeader(&'static str),
    #[error("the {0} header is not visible ASCII text")]
    UnreadableHeader(&'static str),
    #[error(transparent)]
    Caller(#[from] RequestError),
    #[error("query parameter `{name}`: {reason}")]
    Param { name: String, reason: String },
}

impl TraceQuery {
    /// Parses the caller's headers and the query string.
    pub fn parse(
        caller: Option<&str>,
        authentication: Option<&str>,
        query: Option<&str>,
    ) -> Result<Self, TraceQueryError> {
        let caller = caller.ok_or(TraceQueryError::NoCaller)?;
        let caller = parse_entity_ref("principal", &Value::String(caller.to_owned()))?;
        let authentication = authentication
            .ok_or(TraceQueryError::NoAuthentication)?
            .to_owned();
        let mut parsed = Self {
            caller,
            authentication,
            partner: None,
            filter: Filter::default(),
            limit: DEFAULT_LIMIT,
        };
        let mut seen = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.contains(&name) {
                return Err(TraceQueryError::Param {
                    name: name.into_owned(),
                    reason: "given more than once (which one would count?)".into(),
                });
            }
            parsed.set(&name, value.into_owned())?;
            seen.push(name);
        }
        parsed
            .filter
            .check_range()
            .map_err(|reason| TraceQueryError::Param {
                name: "since".into(),
                reason,
            })?;
        Ok(parsed)
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), TraceQueryError> {
        let bad = |reason: String| TraceQueryError::Param {
            name: name.to_owned(),
            reason,
        };
        let time = |v: &str| {
            v.parse::<DateTime<Utc>>().map_err(|e| {
                // A query string reads `+` as a space.
                let plus = if v.contains(' ') {
                    " (a `+` in a query string reads as a space: write it %2B)"
                } else {
                    ""
                };
                bad(format!("`{v}` is not an RFC 3339 time: {e}{plus}"))
            })
        };
        match name {
            "partner" => self.partner = Some(PartnerWanted::parse(&value).map_err(bad)?),
            "principal" => self.filter.principal = Some(entity_filter(&value).map_err(bad)?),
            "resource" => self.filter.resource = Some(entity_filter(&value).map_err(bad)?),
            "decision" => self.filter.decision = Some(decision_filter(&value).map_err(bad)?),
            "since" => self.filter.since = Some(time(&value)?),
            "until" => self.filter.until = Some(time(&value)?),
            "limit" => {
                self.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("expected 1 to {MAX_LIMIT}, got `{value}`")))?;
            }
            _ => return Err(bad("unknown parameter".into())),
        }
        Ok(())
    }
}

/// The action a trace read is decided on.
const READ_TRACES: &str = "Action::\"read_traces\"";

/// [`READ_TRACES`] as a uid.
pub fn read_traces() -> EntityUid {
    READ_TRACES.parse().expect("a well-formed action uid")
}

/// One `read_traces` request per partner whose traces are asked for: the one
/// named, else the caller's own partner, else every partner with traces.
pub fn read_requests(snapshot: &Snapshot, query: &TraceQuery) -> Vec<(String, AuthzRequest)> {
    let own = stored_entity_ref(&snapshot.entities, query.caller.as_ref(), "partner")
        .map(|p| PartnerWanted::Reference(p.clone().into()));
    let wanted = query.partner.clone().or(own);
    snapshot
        .entities
        .iter()
        .filter(|e| e.uid().type_name().basename() == "Trace")
        .filter_map(|trace| {
            let partner = match trace.attr("partner")? {
                Ok(EvalResult::EntityUid(p)) => p,
                _ => return None,
            };
            let asked = wanted.as_ref().is_none_or(|w| w.is(&partner));
            asked.then(|| {
                let id = partner.id().unescaped().to_owned();
                (id, read_request(query, &trace.uid()))
            })
        })
        .collect()
}

fn read_request(query: &TraceQuery, trace: &EntityUid) -> AuthzRequest {
    let mut context = serde_json::Map::new();
    context.insert(
        "authentication".to_owned(),
        Value::String(query.authentication.clone()),
    );
    AuthzRequest {
        principal: Value::String(query.caller.to_string()),
        action: json!(READ_TRACES),
        resource: Value::String(trace.to_string()),
        context: Some(WireContext::Json(context)),
        entities: None,
    }
}
