"""`omnivision bench`: speed and memory of answering one image question, against peers in one run.

`workload` fixes what is measured (image, question, timing rules), `ours` / `transformers_peer` /
`llama_cpp_peer` measure one implementation each, `worker` runs one measurement in its own process
(so each peak resident memory is its own), `prepare` writes the checkpoints and GGUF files the workers
load, and `report` turns the results into the table, the targets, JSON and a PNG.
"""
