"""Stage three: teacher–student agreement measured offline from the store."""

from deit_pipe.audit.agreement import classifier_metrics, disagreement_matrix
from deit_pipe.audit.audit import AuditResult, audit, classifier_label

__all__ = ["AuditResult", "audit", "classifier_label", "classifier_metrics", "disagreement_matrix"]
