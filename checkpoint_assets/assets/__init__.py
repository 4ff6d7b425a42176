"""The migration's software-defined assets: export -> imported batches -> verification
(-> publish, in staging mode); and the way back's (group checkpoint_rollback)."""

from checkpoint_assets.assets.export import checkpoint_export
from checkpoint_assets.assets.imported_batches import imported_checkpoint_batches
from checkpoint_assets.assets.publish import published_checkpoints
from checkpoint_assets.assets.verification import migration_verification

CORE_ASSETS = (checkpoint_export, imported_checkpoint_batches, migration_verification)
STAGING_ASSETS = (published_checkpoints,)
