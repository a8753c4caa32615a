"""The MM-Vet judge: an LLM behind any OpenAI-compatible chat endpoint grading each answer
against the ground truth with the grader prompt.

Each (sample, run) gets the prompt, a newline and the row `question | ground truth (spaces around
<AND>/<OR>) | prediction |`, sent as one user turn. The judge's score is the first space-separated
token of the stripped reply, read as a float that must lie in [0, 1] (the rule shared by lmms-eval
and the official evaluator). A reply that fails is asked again, at a temperature raised by 0.5 per
try (capped at 2.0), up to `max_tries` tries in all; then it scores 0.0, as the reference tools
do. Unlike lmms-eval's loop, an out-of-range number is a failed try too, so grading always ends.
An endpoint that fails (after the client's own retries) also scores 0.0. Every raw reply is kept,
and each grade says whether it failed and how.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from omnivision.chat_client import ChatClient, EndpointError, user_message
from omnivision.eval.scoring.mmvet_prompt import MMVetError
from omnivision.eval.scoring.protocol import FieldError

ROW_END_LMMS_EVAL = " |"
"""lmms-eval ends the graded row with `prediction |`."""
ROW_END_OFFICIAL = " | "
"""The official evaluator and VLMEvalKit join the row with a trailing empty cell: `prediction | `."""
MAX_TEMPERATURE = 2.0
"""The highest temperature OpenAI-style APIs accept."""


@dataclass(frozen=True)
class MMVetRecord:
    question_id: str
    question: str
    answer: str
    """Ground truth; may hold <AND> / <OR>."""
    capabilities: tuple[str, ...]
    prediction: str


def mmvet_records(rows: Sequence[Mapping | MMVetRecord]) -> list[MMVetRecord]:
    """Check rows with question_id, question, answer, capability (list or comma string) and
    prediction; ids must be unique. A bad row raises the scorers' shared FieldError."""
    records = [row if isinstance(row, MMVetRecord) else _record(row, i) for i, row in enumerate(rows)]
    seen: set[str] = set()
    for i, record in enumerate(records):
        if record.question_id in seen:
            raise FieldError("question_id", f"record {i}: question_id {record.question_id!r} appears twice")
        seen.add(record.question_id)
    return records


def _record(row: Mapping, index: int) -> MMVetRecord:
    for name in ("question_id", "question", "answer", "capability", "prediction"):
        if row.get(name) is None:
            raise FieldError(name, f"record {index}: missing field '{name}'")
    for name in ("question", "answer", "prediction"):
        if not isinstance(row[name], str):
            raise FieldError(name, f"record {index}: '{name}' must be a string")
    caps = row["capability"]
    caps = caps.split(",") if isinstance(caps, str) else caps
    if not isinstance(caps, (list, tuple)) or not all(isinstance(c, str) for c in caps):
        raise FieldError("capability", f"record {index}: 'capability' must be a list or a comma string")
    caps = tuple(dict.fromkeys(c.strip() for c in caps if c.strip()))
    if not caps:
        raise FieldError("capability", f"record {index}: 'capability' is empty")
    return MMVetRecord(str(row["question_id"]), row["question"], row["answer"], caps, row["prediction"])


def judge_query(prompt: str, record: MMVetRecord, row_end: str = ROW_END_LMMS_EVAL) -> str:
    answer = record.answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return f"{prompt}\n{record.question} | {answer} | {record.prediction}{row_end}"


def parse_score(reply: str) -> float | None:
    """The first space-separated token of the stripped reply as a score in [0, 1], else None."""
    token = reply.strip().split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None  # NaN fails both comparisons


@dataclass
class Grade:
    question_id: str
    run: int
    score: float
    status: str
    """One of: ok; unparsed (no valid score in max_tries tries, so 0.0); error (the endpoint
    failed, so 0.0)."""
    replies: list[str] = field(default_factory=list)
    """Every raw reply, in order."""
    temperatures: list[float] = field(default_factory=list)
    judge_model: str | None = None
    """The model name the server reported."""
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class MMVetJudge:
    def __init__(self, client: ChatClient, model: str, prompt_template: str, runs: int = 1,
                 max_tries: int = 5, max_tokens: int = 128, temperature_step: float = 0.5,
                 row_end: str = ROW_END_LMMS_EVAL, retry_suffix: str = "", concurrency: int = 4) -> None:
        """`max_tokens` 128 is lmms-eval's (the official evaluator uses 3); `retry_suffix` is
        appended to the query on re-asks (the official evaluator adds a one-line instruction,
        lmms-eval nothing)."""
        if runs < 1 or max_tries < 1 or concurrency < 1 or max_tokens < 1 or temperature_step < 0:
            raise MMVetError("judge: runs, max_tries, concurrency and max_tokens must be >= 1 "
                             "and temperature_step >= 0")
        if not prompt_template.strip():
            raise MMVetError("judge: the grader prompt is empty")
        self.client, self.model, self.prompt = client, model, prompt_template
        self.runs, self.max_tries, self.max_tokens = runs, max_tries, max_tokens
        self.temperature_step, self.row_end, self.retry_suffix = temperature_step, row_end, retry_suffix
        self.concurrency = concurrency

    def grade(self, record: MMVetRecord, run: int = 0) -> Grade:
        query = judge_query(self.prompt, record, self.row_end)
        grade = Grade(record.question_id, run, 0.0, "unparsed")
        for attempt in range(self.max_tries):
            temperature = min(MAX_TEMPERATURE, attempt * self.temperature_step)
            text = query if attempt == 0 else query + self.retry_suffix
            try:
                reply = self.client.complete(self.model, [user_message(text)], temperature=temperature,
                                             max_tokens=self.max_tokens)
            except EndpointError as e:
                grade.status, grade.error = "error", str(e)
                return grade
            grade.replies.append(reply.text)
            grade.temperatures.append(temperature)
            grade.judge_model = reply.model or grade.judge_model
            score = parse_score(reply.text)
            if score is not None:
                grade.score, grade.status = score, "ok"
                return grade
        return grade

    def judge(self, records: Sequence[Mapping | MMVetRecord]) -> list[list[Grade]]:
        """Grades indexed [run][record], in the records' order."""
        checked = mmvet_records(records)
        jobs = [(record, run) for run in range(self.runs) for record in checked]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            flat = list(pool.map(lambda job: self.grade(*job), jobs))
        n = len(checked)
        return [flat[run * n:(run + 1) * n] for run in range(self.runs)]
