// medtune page: send the question as a user message to POST /v1/chat/completions with stream=true and show the
// answer as it arrives (each question is a conversation of its own). Model text is only ever set with textContent
// (never parsed as HTML).
"use strict";

(function () {
  const form = document.getElementById("ask-form");
  const question = document.getElementById("question");
  const askBtn = document.getElementById("ask");
  const stopBtn = document.getElementById("stop");
  const status = document.getElementById("status");
  const answers = document.getElementById("answers");
  const template = document.getElementById("answer-template");
  const noticeText = document.getElementById("notice").textContent.trim();
  let controller = null;

  function newAnswer(q) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.querySelector(".answer-question").textContent = q;
    node.querySelector(".answer-notice").textContent = noticeText; // every answer carries the notice
    node.dataset.chunks = "0";
    answers.prepend(node);
    return node;
  }

  function numberOr(id, fallback) {
    const v = parseFloat(document.getElementById(id).value);
    return Number.isFinite(v) ? v : fallback;
  }

  function finish(node, state, meta) {
    node.dataset.state = state;
    if (meta) node.querySelector(".answer-meta").textContent = meta;
    askBtn.disabled = false;
    stopBtn.disabled = true;
    status.textContent = "";
    controller = null;
  }

  async function ask(q) {
    const node = newAnswer(q);
    const textEl = node.querySelector(".answer-text");
    askBtn.disabled = true;
    stopBtn.disabled = false;
    status.textContent = "waiting for the model…";
    controller = new AbortController();
    const body = {
      messages: [{ role: "user", content: q }],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Math.max(1, Math.round(numberOr("max-tokens", 64))),
      temperature: numberOr("temperature", 0.7),
    };
    let res;
    try {
      res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (e) {
      textEl.textContent = e.name === "AbortError" ? "(stopped)" : "Could not reach the server.";
      return finish(node, "error");
    }
    if (!res.ok) {
      let msg = `HTTP ${res.status}`;
      try { msg = (await res.json()).error.message || msg; } catch (e) { /* not JSON */ }
      textEl.textContent = msg;
      return finish(node, "error");
    }
    node.dataset.state = "streaming";
    status.textContent = "answering…";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finishReason = null;
    let usage = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const obj = JSON.parse(data);
            if (obj.error) throw new Error(obj.error.message);
            if (obj.usage) usage = obj.usage;
            const choice = obj.choices[0];
            if (!choice) continue; // the usage chunk has no choices
            const text = choice.delta.content || "";
            const piece = textEl.textContent ? text : text.trimStart();
            if (piece) {
              textEl.textContent += piece;
              node.dataset.chunks = String(Number(node.dataset.chunks) + 1);
            }
            if (choice.finish_reason) finishReason = choice.finish_reason;
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") {
        return finish(node, "done", "stopped");
      }
      textEl.textContent += `\n[error: ${e.message}]`;
      return finish(node, "error");
    }
    if (!textEl.textContent.trim()) textEl.textContent = "(the model gave an empty answer)";
    const parts = [];
    if (usage) parts.push(`${usage.completion_tokens} tokens`);
    if (finishReason === "length") parts.push("stopped at max tokens");
    finish(node, "done", parts.join(" · "));
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = question.value.trim();
    if (!q || controller) return;
    ask(q);
  });
  question.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
})();
