//! `[governance]`: reporting thresholds of a deployed run.

use super::*;

/// `[governance]`: a node whose own compute or traffic crosses a threshold, or a run whose
/// participants do (checked by node 0 at start), writes a report signed with the node's key
/// and logs its hash; with `pause` it then stops, as on a halt, until an authorized key
/// approves the report (`braid approve`). Deployed runs only (docs/governance.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// FLOPs (training and evaluation) one node may spend before it reports (1 to 1e30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_flops: Option<f64>,
    /// Bytes one node may send and receive, together, before it reports (1 to 1e18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_bytes: Option<f64>,
    /// FLOPs the whole run may spend before node 0 reports, as node 0 knows them: its own
    /// plus the latest totals each other node showed in its acknowledgements (1 to 1e30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_run_flops: Option<f64>,
    /// Bytes (sent plus received, over the nodes) the whole run may move before node 0
    /// reports, known the same way (1 to 1e18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_run_bytes: Option<f64>,
    /// Participants (`[network]`) a run may have before node 0 reports, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_participants: Option<usize>,
    /// Where reports are written (default: the node's output directory). Not part of the
    /// run id: it may differ between machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_dir: Option<PathBuf>,
    /// Stop the node at a crossing (checkpoint, log, leave `paused`) until `braid approve`
    /// signs a continue with one of `network.halt_keys` (default false).
    #[serde(default)]
    pub pause: bool,
}

impl GovernanceConfig {
    /// Checks the ranges, and that the table names a threshold.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(f) = self.report_flops {
            check_in("governance.report_flops", f, 1.0, 1e30)?;
        }
        if let Some(b) = self.report_bytes {
            check_in("governance.report_bytes", b, 1.0, 1e18)?;
        }
        if let Some(f) = self.report_run_flops {
            check_in("governance.report_run_flops", f, 1.0, 1e30)?;
        }
        if let Some(b) = self.report_run_bytes {
            check_in("governance.report_run_bytes", b, 1.0, 1e18)?;
        }
        if let Some(p) = self.report_participants {
            check_in("governance.report_participants", p, 1, MAX_CLIENTS + 1)?;
        }
        if self.report_flops.is_none()
            && self.report_bytes.is_none()
            && self.report_run_flops.is_none()
            && self.report_run_bytes.is_none()
            && self.report_participants.is_none()
        {
            return Err(Invalid::missing(
                "governance",
                "[governance] names no threshold: set report_flops, report_bytes, report_run_flops, report_run_bytes or report_participants",
            ));
        }
        Ok(())
    }
}
