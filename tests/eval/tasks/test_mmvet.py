"""`mmvet`: lmms-lab/MMVet (test) shards and VLMEvalKit's MMVet.tsv; the step-by-step pre-prompt
and the sampling settings."""

from __future__ import annotations

from omnivision.eval.tasks import get_task
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, write_parquet, write_tsv

MMVET_TYPES = {"question_id": pa.string(), "image": IMAGE, "question": pa.string(),
               "answer": pa.string(), "image_source": pa.string(), "capability": pa.string()}

# by hand: the default pre-prompt (note the space after the colon), two newlines, the question
PROMPT = ("First please perform reasoning, and think step by step to provide best answer to the "
          "following question: \n\nWhat is x in the equation?")


def test_mmvet_prompt_fields_and_settings(tmp_path):
    write_parquet(tmp_path / "MMVet/data/test-00000-of-00001.parquet", {
        "question_id": ["v1"], "image": [image_cell("white")], "question": ["What is x in the equation?"],
        "answer": ["-1<AND>-5"], "image_source": ["x.png"], "capability": ["ocr,math"],
    }, MMVET_TYPES)
    [sample] = get_task("mmvet").samples(tmp_path)
    assert sample.prompt == PROMPT and sample.id == "v1"
    assert sample.fields == {"question_id": "v1", "question": "What is x in the equation?",
                             "answer": "-1<AND>-5", "capability": "ocr,math"}
    assert colour_of(sample.images[0]) == "white"
    gen = sample.generation  # mmvet.yaml: 1024 tokens, temperature 0.2 but do_sample false, top_p 1.0
    assert (gen.max_new_tokens, gen.temperature, gen.do_sample, gen.top_p, gen.num_beams,
            gen.until) == (1024, 0.2, False, 1.0, 1, ("\n\n",))


def test_mmvet_from_the_vlmevalkit_tsv(tmp_path):
    write_tsv(tmp_path / "MMVet.tsv", ["index", "image", "question", "answer", "category"], [
        ["0", b64("red"), "What is x in the equation?", "-1 <AND> -5", "ocr,math"],
    ])
    [sample] = get_task("mmvet").samples(tmp_path)
    assert sample.prompt == PROMPT
    assert sample.fields == {"question_id": "0", "question": "What is x in the equation?",
                             "answer": "-1 <AND> -5", "capability": "ocr,math"}
