"""The LoViF 2026 efficiency protocol: pure formulas (`formulas`), FLOP/param counting (`flops`, `profile`),
every recipe counted (`recipes`), scoring submission files (`score`) and the PLCC-vs-C plot (`plots`).
Imported module by module, so `formulas` stays free of torch and matplotlib. Timings live in
`effiminivlm.bench`; the terminal tables in `effiminivlm.cli.tables`."""
