"""A seeded synthetic atmosphere: the project's built-in demo data (nothing is downloaded).

The research question is whether weather upstream (west) helps a precipitation forecast downstream,
so the demo data must contain that signal, and must also contain rain that upstream cannot foresee:

- **Background**: a zonally uniform state that varies with latitude, pressure and season. Temperature
  falls with height at about 6.5 K/km up to a tropopause and falls poleward; geopotential height is
  integrated from it hypsometrically (~110 m at 1000 hPa, ~14 km at 150 hPa); a westerly jet peaks
  near 230 hPa, stronger and further south in winter; the air is moister near the surface, in summer
  and to the south.
- **Weather systems**: cyclones are born west of and in the western part of the domain (a Poisson
  process) and travel east at 4.5–10.5° longitude per 12-hour step with some north/south drift,
  growing and decaying over a few days. Each carries a height low (deeper aloft and tilted west with
  height), a warm-ahead/cold-behind temperature dipole, geostrophic (cyclonic) winds, moist air ahead,
  and rain: a core plus a trailing cold-frontal band, scaled by low-level moisture and a lognormal
  factor. A system seen upstream at step t rains downstream 1–3 steps later.
- **Convection**: one-step convective cells at random places (more in summer and in the 00–12 UTC
  step, i.e. East-Asian daytime) with gamma-distributed intensity: rain nothing upstream predicts.
- **Noise**: smooth, temporally correlated noise on every field, so no field is an exact function of
  another.

Precipitation at a time stamp is accumulated over the 12 hours ending at it (mm); the atmospheric
fields are instantaneous. Everything is drawn from ``numpy.random.default_rng(seed)`` and defined in
degrees, not grid cells, so the same settings (``convlstm.config.DemoAtmosphere``) give bit-identical
fields and a finer ``resolution`` samples the same weather more densely.

Modules: ``atmosphere`` (the physics, the time loop), ``generator`` (settings in, CF dataset out), ``cache``.
"""

from convlstm.config import DemoAtmosphere
from convlstm.data.demo.cache import CACHE_ENV_VAR, demo_data_path, write_demo_dataset
from convlstm.data.demo.generator import GENERATOR_VERSION, generate_demo_dataset

__all__ = ["CACHE_ENV_VAR", "GENERATOR_VERSION", "DemoAtmosphere", "demo_data_path", "generate_demo_dataset",
           "write_demo_dataset"]
