"""The LoViF 2026 efficiency protocol: pure formulas (`formulas`), FLOP/param counting (`flops`, `profile`),
scoring submission files (`score`), the runtime benchmark (`runtime`), the PLCC-vs-C plot (`plots`) and the
terminal tables (`tables`). Imported module by module, so `formulas` stays free of torch and matplotlib."""
