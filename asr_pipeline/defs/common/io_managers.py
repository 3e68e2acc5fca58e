"""Disk storage for the assets: each materialization is a directory under ASR_HOME/storage, published atomically.

Assets write into a staging directory (`stage(context)`) and return its path; handle_output renames it into
place, so a killed run never leaves a half-written asset for a later run to read. load_input hands downstream
assets the published path.
"""


from pathlib import Path

import dagster as dg

from asr_pipeline.core.storage import directory_bytes, publish, staging_dir


class AssetDirectoryIOManager(dg.ConfigurableIOManager):
    base_dir: str

    def _path(self, key: dg.AssetKey, partition: str | None = None) -> Path:
        path = Path(self.base_dir).joinpath(*key.path)
        return path / partition if partition else path

    def asset_path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        if isinstance(context, dg.InputContext):
            partition = context.asset_partition_key if context.has_asset_partitions else None
        else:
            partition = context.partition_key if context.has_partition_key else None
        return self._path(context.asset_key, partition)

    def handle_output(self, context: dg.OutputContext, obj: Path) -> None:
        if not isinstance(obj, Path) or not obj.is_dir():
            raise TypeError(f"{context.asset_key.to_user_string()} must return its staged directory, got {obj!r}")
        # the whole asset directory swept: a batch republished once (a backfill) leaves its old version to be
        # removed by the next publish of any batch
        final = publish(obj, self.asset_path(context), sweep_directory=True)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(final)),
                                     "bytes_on_disk": directory_bytes(final)})

    def load_input(self, context: dg.InputContext) -> Path | dict[str, Path]:
        """A partitioned run gets its own batch's directory; an unpartitioned one (training, evaluation) gets
        {batch key: directory} for every materialized batch."""
        if context.has_asset_partitions and not context.has_partition_key:
            found = {key: self._path(context.asset_key, key) for key in context.asset_partition_keys}
            missing = sorted(key for key, path in found.items() if not path.is_dir())
            if missing:
                context.log.warning(f"{len(missing)} registered batches of {context.asset_key.to_user_string()} "
                                    f"are not materialized yet and are left out: {missing[:5]}")
            return {key: path for key, path in found.items() if key not in missing}
        path = self.asset_path(context)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{context.asset_key.to_user_string()} has not been materialized yet (nothing at {path})")
        return path


def stage(context: dg.AssetExecutionContext, base_dir: str | Path) -> Path:
    """A fresh staging directory beside where the IO manager will publish this asset."""
    partition = context.partition_key if context.has_partition_key else None
    final = Path(base_dir).joinpath(*context.asset_key.path)
    return staging_dir(final / partition if partition else final)
