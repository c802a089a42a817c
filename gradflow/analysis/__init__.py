"""Analysis of Snapshots and Histories: `diagnose` (findings and suggestions), `divergence`
(where training went non-finite), `theory` (mean-field predictions at init), `summary` (the
model's hierarchy) and `flops` (parameters and multiply-adds per layer)."""
