"""Stage three: teacher–student agreement measured offline from the store."""

from deit_pipe.audit.agreement import disagreement_matrix
from deit_pipe.audit.audit import AuditResult, audit, classifier_label
from deit_pipe.student.metrics import classifier_metrics

__all__ = ["AuditResult", "audit", "classifier_label", "classifier_metrics", "disagreement_matrix"]
