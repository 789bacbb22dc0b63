//! The decision log (traceability, DOMAIN.md T1–T3): every decision is appended as
//! one hash-chained JSON line before its response is sent.
//!
//! - [`record`]: the record, its canonical line and chained hash.
//! - [`writer`]: the handle handlers share; it appends each record through a shared
//!   memory mapping of the newest file, and syncs them in groups with `--audit-fsync`.
//! - [`rotate`]: file names, daily and size rotation, retention.
//! - [`query`]: filters shared by `cdap-authz audit query` and `GET /v1/traces`.
//! - [`verify`]: checks the chain and finds the first broken record.

use std::path::PathBuf;
use std::sync::Arc;

use cedar_policy::{Entities, EntityUid};
use cedar_policy_core::ast;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::api::{AuthzRequest, AuthzResponse};
use crate::engine::Decision;
use crate::slice::{entity_ref_attribute, stored_in_place};

pub mod query;
pub mod record;
pub mod rotate;
pub mod verify;
pub mod writer;

pub use record::{Entry, Fields, Record, RecordedContext};
pub use writer::{Ack, AuditLog};

/// Default directory of the log.
pub const DEFAULT_DIR: &str = "./audit";
/// Default size at which a file is rotated.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Default retention: six months (T2).
pub const DEFAULT_RETENTION_DAYS: u32 = 183;
/// Context fields recorded by default: the purpose and the data categories.
pub const DEFAULT_CONTEXT_FIELDS: &[&str] = &["mission", "categories"];

/// The current time, injectable for tests of rotation and retention.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How the log is kept.
#[derive(Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Acknowledge a record once an `fdatasync` covers it (power-loss durability),
    /// one sync for all the records appended meanwhile.
    pub fsync: bool,
    pub max_file_bytes: u64,
    pub retention_days: u32,
    pub context_fields: Vec<String>,
    pub clock: Clock,
}

impl AuditConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            retention_days: DEFAULT_RETENTION_DAYS,
            context_fields: DEFAULT_CONTEXT_FIELDS
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            clock: Arc::new(Utc::now),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{0}: no whole record found at the end of the file")]
    NoTail(PathBuf),
    #[error(
        "{0}: its last whole line is not a decision record (altered, or not written by the \
         sidecar); run `cdap-authz audit verify`"
    )]
    NotARecord(PathBuf),
    #[error("the audit log is closed")]
    Closed,
    #[error("{0}: no decision log file (decisions-*.jsonl) here")]
    NoLog(PathBuf),
    #[error(
        "{0}: another process writes this decision log (a sidecar still running or \
         draining?): two writers would overwrite each other's records; stop it first, or \
         give this sidecar its own --audit-dir"
    )]
    Locked(PathBuf),
    #[error(
        "{0}: the decision log's file was removed or replaced while open (its directory \
         deleted?): records appended to it since the last check (at most a second) are \
         lost; writing to that path anew"
    )]
    Moved(PathBuf),
    #[error("a decision was submitted to the log and got no acknowledgement (a defect)")]
    Unacknowledged,
}

impl AuditError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// What one decision leaves in the log: who, what, which file, for what purpose,
/// the outcome and why.
pub struct Decided<'a> {
    pub request: &'a AuthzRequest,
    pub decision: &'a Decision,
    pub response: &'a AuthzResponse,
    /// The entities the decision was made on (stored, plus the request's own).
    pub entities: &'a Entities,
    /// The stored entities alone (the snapshot's).
    pub stored: &'a Entities,
    /// Whether the stored resource's partner files the record when the principal
    /// has none.
    pub resource_partner: bool,
    /// Stored entities already looked up (the principal and the resource).
    pub found: &'a [&'a ast::Entity],
    pub time: DateTime<Utc>,
    pub latency_us: u64,
}

impl<'a> Decided<'a> {
    /// The record. Its `partner`, which decides whose administrators read it
    /// (`/v1/traces`), is the principal's partner (a principal is stored, or brought
    /// under `--request-principals`, which trusts the backend with it), else the
    /// stored resource's when [`Self::resource_partner`] allows: an entity the
    /// request brings, which a denied decision has not vouched for, cannot file a
    /// record under another partner. Its `caf`
    /// is the file's, as the request describes it when it brings the file (files
    /// usually come with the request), else the partner's, else the principal's.
    pub fn entry(&self, context_fields: &[String]) -> Entry {
        let Decision {
            principal,
            action,
            resource,
            ..
        } = self.decision;
        let partner = self
            .attribute(self.entities, principal, "partner")
            .or_else(|| {
                self.resource_partner
                    .then(|| self.attribute(self.stored, resource, "partner"))
                    .flatten()
            });
        let caf = self
            .attribute(self.entities, resource, "caf")
            .or_else(|| partner.and_then(|p| caf_of(self.stored, p)))
            .or_else(|| self.attribute(self.entities, principal, "caf"));
        let diagnostics = &self.response.diagnostics;
        Entry::new(&Fields {
            time: &self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            decision_id: &self.response.decision_id,
            principal: &uid_text(principal),
            action: &uid_text(action),
            resource: &uid_text(resource),
            partner: partner.map(|p| p.eid().as_ref()),
            caf: caf.map(|c| c.eid().as_ref()),
            context: RecordedContext {
                names: context_fields,
                context: self.request.context.as_ref(),
            },
            decision: self.response.decision.as_str(),
            reason: &diagnostics.reason,
            errors: &diagnostics.errors,
            policy_version: &self.response.policy_version,
            latency_us: self.latency_us,
        })
    }

    /// The entity attribute `name` of `uid`, looked up among the entities already
    /// found, else in `entities`.
    fn attribute(
        &self,
        entities: &'a Entities,
        uid: &EntityUid,
        name: &str,
    ) -> Option<&'a ast::EntityUID> {
        let uid = uid.as_ref();
        let found = self
            .found
            .iter()
            .copied()
            .find(|entity| entity.uid() == uid);
        entity_ref_attribute(found.or_else(|| stored_in_place(entities, uid))?, name)
    }
}

/// A uid as Cedar displays it (`Type::"id"`); when the id has nothing to escape (the
/// usual case), put together from its parts, without Cedar's escaping pass and
/// formatter (≈0.2 µs a uid).
fn uid_text(uid: &EntityUid) -> String {
    let id = uid.id().unescaped();
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return uid.to_string();
    }
    let type_name = uid.type_name();
    let mut text = String::with_capacity(48);
    for part in type_name.namespace_components() {
        text.push_str(part);
        text.push_str("::");
    }
    text.push_str(type_name.basename());
    text.push_str("::\"");
    text.push_str(id);
    text.push('"');
    text
}

/// The `Caf` a partner belongs to.
fn caf_of<'e>(entities: &'e Entities, partner: &ast::EntityUID) -> Option<&'e ast::EntityUID> {
    stored_in_place(entities, partner)?
        .ancestors()
        .find(|a| AsRef::<str>::as_ref(a.entity_type().name().basename_as_ref()) == "Caf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_written_as_cedar_displays_them() {
        for (type_name, id) in [
            ("User", "dep-t18"),
            ("Action", "consult_file"),
            ("Cdap::File", "dossier-59.0002"),
            ("User", "quote\"and\\slash"),
            ("User", "tab\tnewline\n"),
            ("User", "accentué"),
            ("User", ""),
        ] {
            let uid = EntityUid::from_type_name_and_id(
                type_name.parse().unwrap(),
                cedar_policy::EntityId::new(id),
            );
            assert_eq!(uid_text(&uid), uid.to_string(), "{type_name} {id:?}");
        }
    }
}
