"""The make_data entry point end to end, in this process: flags → DemoAtmosphere → file (tiny grids, ~1 s)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from click.testing import CliRunner

from convlstm.errors import ConfigError
from convlstm.commands.make_data import make_data

TINY = ["--years", "0.02", "--resolution", "2.5", "--start", "2001-01-01"]


def test_writes_refuses_to_overwrite_then_replaces(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "demo.nc"
    done = runner.invoke(make_data, ["--output", str(out), *TINY, "--seed", "3"])
    assert done.exit_code == 0, done.output
    assert f"Wrote {out}" in done.output
    with xr.open_dataset(out) as ds:
        assert ds.sizes["lat"] == 7 and ds.sizes["time"] == 15 and "seed=3" in ds.attrs["source"]
    mtime = out.stat().st_mtime_ns

    refused = runner.invoke(make_data, ["--output", str(out), *TINY])
    assert isinstance(refused.exception, ConfigError) and refused.exception.setting == "output"
    assert "--overwrite" in str(refused.exception) and out.stat().st_mtime_ns == mtime

    replaced = runner.invoke(make_data, ["--output", str(out), *TINY, "--seed", "4", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    with xr.open_dataset(out) as ds:
        assert "seed=4" in ds.attrs["source"]


def test_bad_flags_name_the_setting_and_write_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "x.nc"
    for flags, setting in ((["--years", "-1"], "years"), (["--resolution", "0.7"], "lat_range"),
                           (["--start", "2000-01-01T06"], "start"), (["--lon-range", "125", "70"], "lon_range")):
        result = runner.invoke(make_data, ["--output", str(out), *flags])
        assert isinstance(result.exception, ConfigError) and result.exception.setting == setting, (flags, result.output)
    assert not list(tmp_path.iterdir())


def test_help_lists_the_atmosphere_flags_and_examples() -> None:
    result = CliRunner().invoke(make_data, ["--help"])
    assert result.exit_code == 0
    for flag in ("--output", "--start", "--years", "--resolution", "--lat-range", "--lon-range", "--seed", "--compress"):
        assert flag in result.output, flag
    assert "convlstm-make-data --output demo.nc" in result.output
