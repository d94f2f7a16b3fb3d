"""The error models stage: what a multiplier's table does to each layer's output, predicted and measured.

- `analytic`: P1's expected GEMM distortion from the error table's moments (our derivation);
- `estimators`: the σ predictors as array functions (sampled, weight-aware, P3's population model);
- `profiles`: per-layer calibration profiles of a prepared run (`profiles/profiles.npz`);
- `predict`: the [layers × multipliers] prediction table (`Predictions`, `profiles/predictions.json`);
- `mapping`: learned tolerances to multipliers (P3's greedy mapping);
- `analyze`: predicted vs measured error (`dse analyze`).
"""
