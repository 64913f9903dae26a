"""The Knock client: verbs (:mod:`.client`), one paced and retried request
(:mod:`.transport`, the only module of the sink that speaks HTTP) and bulk operations followed
to their end (:mod:`.bulk`). Importers use the names exported here."""

from .bulk import BulkResult
from .client import KnockClient, MergeResult

__all__ = ["BulkResult", "KnockClient", "MergeResult"]
