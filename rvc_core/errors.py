"""The error hierarchy. Each class has a stable machine-readable `code`; messages are for humans.

The code travels into the CLI's `error: <code>: <message>` line and the `failed` CloudEvent.
"""

from __future__ import annotations


class RvcError(Exception):
    code = "rvc_error"
    retryable = False

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage

    def as_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "code": self.code, "message": self.message, "retryable": self.retryable}


# --- the dataset the user sent -------------------------------------------------------------------
class BadDataset(RvcError):
    code = "bad_dataset"


class NotAZip(BadDataset):
    code = "not_a_zip"


class ZipCorrupt(BadDataset):
    code = "zip_corrupt"


class ZipEncrypted(BadDataset):
    code = "zip_encrypted"


class ZipUnsafe(BadDataset):
    """An entry would escape the extraction folder (`..`, absolute path, symlink)."""

    code = "zip_unsafe"


class ZipBomb(BadDataset):
    """Too large when uncompressed, too compressed, or too many entries."""

    code = "zip_bomb"


class NoAudio(BadDataset):
    """Nothing in the archive could be decoded as audio."""

    code = "no_audio"


class TooLittleAudio(BadDataset):
    code = "too_little_audio"


class TooMuchAudio(BadDataset):
    """More decoded audio than the job's scratch space can hold once prepared."""

    code = "too_much_audio"


# --- configuration and environment ----------------------------------------------------------------
class ConfigError(RvcError):
    code = "invalid_config"


class ConfigMismatch(ConfigError):
    """A work dir or checkpoint was made with a different configuration."""

    code = "config_mismatch"


class AssetMissing(RvcError):
    code = "asset_missing"


class AssetCorrupt(RvcError):
    code = "asset_corrupt"


# --- training -----------------------------------------------------------------------------------
class TrainingFailed(RvcError):
    code = "training_failed"


class NonFiniteLoss(TrainingFailed):
    code = "non_finite_loss"


# --- appended by data preparation (intake, audio decoding) ----------------------------------------
class ZipUnsupported(BadDataset):
    """The zip uses a feature we cannot read (e.g. Deflate64 or another uncommon compression method)."""

    code = "zip_unsupported"


class UndecodableAudio(BadDataset):
    """A file that looks like audio could not be decoded, or decoded to no samples."""

    code = "undecodable_audio"


class WorkDirIncomplete(ConfigError):
    """The work dir lacks prepared files that training needs, or they do not fit the config."""

    code = "workdir_incomplete"


class TrainingOutOfMemory(TrainingFailed):
    """The accelerator ran out of memory even at batch size 1."""

    code = "out_of_memory"


class CheckpointCorrupt(TrainingFailed):
    """A training checkpoint exists but cannot be read."""

    code = "checkpoint_corrupt"


class PretrainedMismatch(ConfigError):
    """Pretrained weights do not fit the model: missing, unexpected or mis-shaped keys."""

    code = "pretrained_mismatch"


class NonFiniteFeatures(RvcError):
    """Content features came out NaN or inf, even after recomputing in float32."""

    code = "non_finite_features"
