"""`compose()` over the packaged `conf/` tree, and one-line messages for Hydra's composition errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig

from cogvid.config.schema import ExportConfig, SampleConfig, TrainRunConfig
from cogvid.utils.errors import CogvidError

PACKAGE_RESOLVER = "cogvid.package"


def package_path(relative: str) -> str:
    """`relative` under the installed cogvid package (the folder of cogvid/__init__.py), as an absolute path.

    Configs name shipped files with it, `${cogvid.package:weights/shapes/vae/3d-vae.pt}`, so they resolve the same
    from a source checkout, an editable install and a wheel.
    """
    return str(Path(__file__).resolve().parents[1] / relative)


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (primary configs list them first in their defaults) and register the
    `cogvid.package` resolver."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(PACKAGE_RESOLVER):
        OmegaConf.register_new_resolver(PACKAGE_RESOLVER, package_path)

    cs = ConfigStore.instance()
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(name="export_schema", node=ExportConfig)


def conf_dir() -> Path:
    """The packaged config tree: cogvid/conf in a wheel, ../conf in a source checkout."""
    here = Path(__file__).resolve().parents[1]  # the cogvid package
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "sample.yaml").is_file():
            return candidate
    raise CogvidError(f"cogvid's config tree is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


def compose(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "sample",
    config_dirs: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
) -> DictConfig:
    """Compose a config from the packaged tree plus extra config dirs, as the command line would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    extra = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides) + extra)
    except Exception as ex:  # Hydra and OmegaConf raise many types; all mean "this config is wrong"
        raise CogvidError(describe_config_error(ex)) from ex


def describe_config_error(ex: BaseException) -> str:
    """One line out of Hydra's and OmegaConf's multi-line, chained composition errors.

    The most specific message is OmegaConf's (it names the key); Hydra's outer message says where.
    """
    from omegaconf.errors import OmegaConfBaseException

    chain, seen = [], set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        chain.append(ex)
        ex = ex.__cause__ or ex.__context__
    lines = [(str(e).strip().splitlines() or [type(e).__name__])[0].strip() for e in chain]
    omegaconf_lines = [line for e, line in zip(chain, lines, strict=True) if isinstance(e, OmegaConfBaseException)]
    detail = omegaconf_lines[0] if omegaconf_lines else lines[0]
    where = lines[0]
    from hydra.errors import OverrideParseException

    unparsed = next((e.override for e in chain if isinstance(e, OverrideParseException)), None)
    if unparsed is not None and "=" not in unparsed and not unparsed.startswith("~"):
        return f"cannot parse the override {unparsed!r}: an override is key=value (or +key=value, ~key)"
    if unparsed is not None or where.startswith("Ambiguous value"):
        # Hydra's own advice is on its later lines: keep the part about quoting
        what = f"cannot parse the override {unparsed!r}" if unparsed is not None else where
        return f"{what}: a value with commas, quotes, brackets or '=' must be quoted, e.g. \"key='a, b'\""
    if where == detail:
        return detail
    if match := re.match(r"(?:Error merging override|Could not override) '?([^']*)'?", where):
        return f"{detail} (override {match.group(1)})"
    if match := re.match(r"In '([^']*)'", where):
        return f"{detail} (in config '{match.group(1)}')"
    return f"{where}: {detail}"
