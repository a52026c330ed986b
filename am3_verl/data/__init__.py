"""Data conversion: source formats in, verl parquet (RL, SFT, eval) out, with validation.

* :mod:`am3_verl.data.readers` – stream records from JSONL, JSON, parquet or a saved ``datasets`` folder
* :mod:`am3_verl.data.images` – load, check, optionally resize and encode images
* :mod:`am3_verl.data.validate` – reject rows (id, field, reason) from pydantic errors and file checks
* :mod:`am3_verl.data.splits` – deterministic stratified train/val split
* :mod:`am3_verl.data.pipeline` – the ordered, bounded, two-core conversion loop and parquet writing
* :mod:`am3_verl.data.conversion` – the driver every converter runs on (folder lock, staged outputs, workers,
  counts, flags)
* :mod:`am3_verl.data.intersafe_v`, :mod:`am3_verl.data.cold_start`, :mod:`am3_verl.data.safemt` – the converters
* :mod:`am3_verl.data.card` – the ``README.md`` dataset card every output folder gets (Hugging Face front matter;
  marked, so that a README the data commands did not write is never replaced)
* :mod:`am3_verl.data.sample` – the bundled sample data (``am3_verl/resources/sample``) and its generator
"""
