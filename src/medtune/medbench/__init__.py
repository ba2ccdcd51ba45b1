"""Medical multiple-choice benchmarks scored by log-likelihood, the way EleutherAI's lm-evaluation-harness scores them.

Why our own scorer and not lm-eval itself: lm-eval 0.4.13 installs here and does run offline on a local file with an
in-memory transformers model or PeftModel, but it adds about 30 packages (scikit-learn, scipy, sacrebleu, aiohttp,
evaluate, ...), needs a YAML task definition written to disk for every local file, and its PubMedQA task points at
`bigbio/pubmed_qa`, a loading-script dataset that `datasets>=4` refuses to load. The harness's prompt formats are
simple, so this module reproduces them (same prompt text, same " " + choice continuations, same token split of
context and continuation, same left truncation, same acc / acc_norm) with a scorer of its own. Checked once against
lm-eval 0.4.13 on the same invented local files and a random tiny GPT-2 (with medtune's tiny tokenizer and with
GPT-2's, one prompt longer than the context): identical prompts and continuations, per-choice log-likelihoods equal
within 2e-6, identical acc and acc_norm.

Tasks (name: hub id / config / split; prompt; continuations):
  medmcqa      openlifescienceai/medmcqa, validation (lm-eval scores validation: the test split has no answers)
               "Question: {question}\\nChoices:\\nA. {opa}\\nB. {opb}\\nC. {opc}\\nD. {opd}\\nAnswer:"   " A".." D"
  medqa        GBaker/MedQA-USMLE-4-options, test (lm-eval's medqa_4options reads the same questions from the
               -hf copy: sent1 / ending0-3 / label; files in either layout are accepted)
               "Question: {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"   " A".." D"
  pubmedqa     qiaojin/PubMedQA, pqa_labeled, train: all 1,000 expert-labelled questions. lm-eval's pubmedqa scores
               the 500-question test fold of bigbio/pubmed_qa (pubmed_qa_labeled_fold0_source), which datasets>=4
               cannot load; a file exported from it (QUESTION / CONTEXTS / final_decision) is accepted, as are the
               original release's JSON files (a dict keyed by PMID)
               "Abstract: {contexts joined by \\n}\\nQuestion: {question}\\nAnswer:"   " yes" / " no" / " maybe"
  mmlu_<subject>  cais/mmlu, <subject>, test; subjects anatomy, clinical_knowledge, college_biology,
               college_medicine, medical_genetics, professional_medicine
               "The following are multiple choice questions (with answers) about {subject, _ as space}.\\n\\n"
               "{question stripped}\\nA. {choices[0]}\\n...\\nD. {choices[3]}\\nAnswer:"   " A".." D"

Local files (`--benchmark NAME=FILE`, read_rows): the hub dataset's columns as .jsonl, .json, .csv or .parquet, or
the original releases as they come: MedMCQA's dev.json (JSON Lines under a .json name, cop 1-4), MMLU's header-less
CSVs (question, A, B, C, D, answer letter; the subject from a name such as anatomy_test.csv) or their data/test
folder (each subject reads <subject>_test.csv), PubMedQA's ori_pqal.json (a dict keyed by PMID: QUESTION, CONTEXTS,
final_decision, ...). Anything else is one error line naming the layouts the task reads.

Answers: MedMCQA's cop is 0-3 as on the hub; a file holding a 4 and no 0 is taken for the original release's 1-4
numbering and shifted. Answers may also be letters (A-D) where the hub has indices. Item ids come from the `id`
(PubMedQA: `pubid`) column, else the row number.

`mmlu_medical` is a group: it expands to the six mmlu_<subject> tasks, each scored and reported on its own as lm-eval
does, and `score_tasks` adds an `mmlu_medical` row weighted by the number of questions (lm-eval's MMLU groups
weight by size too). A file given for the group (`mmlu_medical=FILE`) is shared by the six tasks: each keeps the
rows of its own `subject` (cais/mmlu rows carry one); a file without a `subject` column is used whole.

Scoring, per question: for every choice, the sum of the log-probabilities of the continuation tokens after the
prompt (acc: the highest wins) and that sum divided by the choice's length in characters (acc_norm, lm-eval's
normalisation; for one-letter choices acc_norm equals acc). Prompts longer than the model's context are cut from
the left, as lm-eval does. Rows are sorted by length and run in batches padded on the right, with no generation;
when every continuation of a question is a single token (the letter tasks) one forward pass scores all its choices.
Base vs tuned is the caller's: score the base model, then the base with the run's adapter (medtune.evaluate);
`forgetting` flags a tuned accuracy below the lower end of the base model's 95% interval.
"""

from medtune.medbench.scoring import choice_logliks, compare, forgetting, score, score_tasks, truncated_count
from medtune.medbench.tasks import (
    ALIASES,
    GROUPS,
    LETTERS,
    MMLU_MEDICAL,
    TASKS,
    Benchmark,
    Item,
    TaskSpec,
    load_benchmarks,
    load_task,
    medmcqa_item,
    medqa_item,
    mmlu_item,
    parse_benchmarks,
    pubmedqa_item,
    read_rows,
    valid_names,
)

__all__ = [
    "ALIASES",
    "GROUPS",
    "LETTERS",
    "MMLU_MEDICAL",
    "TASKS",
    "Benchmark",
    "Item",
    "TaskSpec",
    "choice_logliks",
    "compare",
    "forgetting",
    "load_benchmarks",
    "load_task",
    "medmcqa_item",
    "medqa_item",
    "mmlu_item",
    "parse_benchmarks",
    "pubmedqa_item",
    "read_rows",
    "score",
    "score_tasks",
    "truncated_count",
    "valid_names",
]
