// llmstream web page: ask a question, watch the answer stream in, stop it at will.
// No dependencies. Talks to the same origin only, through relative URLs:
//   GET  health                -> {"status": "ok"|"loading"|"error", model, context_types, ...}
//   POST v1/chat/completions   -> server-sent events (data: {chunk} ... data: [DONE])
// Model output is only ever inserted as text (text nodes), never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("ask"),
    prompt: $("prompt"),
    context: $("context-type"),
    send: $("send"),
    stop: $("stop"),
    answer: $("answer"),
    status: $("status"),
    model: $("model"),
  };

  let ready = false;        // /health said "ok"
  let controller = null;    // AbortController of the generation in progress, if any
  let healthTimer = null;

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = kind || "";
  }

  function updateControls() {
    const busy = controller !== null;
    ui.send.disabled = busy || !ready;
    ui.stop.disabled = !busy;
    ui.context.disabled = busy || !ready;
  }

  // ---- the answer area -------------------------------------------------------------------

  function clearAnswer() {
    ui.answer.textContent = "";
  }

  /** Append a piece of model output to the answer, as plain text. */
  function appendAnswer(text) {
    if (text === undefined || text === null || text === "") return;
    text = String(text);
    const box = ui.answer;
    const follow = box.scrollHeight - box.scrollTop - box.clientHeight < 32;
    const last = box.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) {
      last.appendData(text);
    } else {
      box.appendChild(document.createTextNode(text));
    }
    if (follow) box.scrollTop = box.scrollHeight;
  }

  // ---- health: model name, context types, "loading model…" -------------------------------

  function pollHealth(ms) {
    clearTimeout(healthTimer);
    healthTimer = setTimeout(checkHealth, ms);
  }

  async function checkHealth() {
    let res;
    let info = {};
    try {
      res = await fetch("health", { cache: "no-store" });
      info = await res.json().catch(() => ({}));
    } catch (e) {
      setStatus("cannot reach the server — retrying…", "error");
      pollHealth(2000);
      return;
    }
    if (res.ok && info.status === "ok") {
      applyHealth(info);
    } else if (info.status === "loading") {
      setStatus("loading model…");
      pollHealth(1000);
    } else if (info.status === "error") {
      setStatus("the model failed to load: " + (info.message || "unknown error"), "error");
      pollHealth(5000);
    } else {
      setStatus(`health check failed (HTTP ${res.status}) — retrying…`, "error");
      pollHealth(2000);
    }
  }

  function applyHealth(info) {
    ui.model.textContent = info.model || "(unnamed model)";
    const previous = ui.context.value;
    const types = Array.isArray(info.context_types) ? info.context_types : [];
    ui.context.replaceChildren(
      ...types.map((name) => {
        const opt = document.createElement("option");
        opt.value = name;
        opt.textContent = name;
        return opt;
      })
    );
    const wanted = types.includes(previous) ? previous : info.default_context_type;
    if (types.includes(wanted)) ui.context.value = wanted;
    ready = true;
    updateControls();
    if (!controller) {
      setStatus(info.n_ctx ? `ready · context window ${info.n_ctx} tokens` : "ready");
    }
  }

  // ---- server-sent events ----------------------------------------------------------------

  /**
   * Read an SSE body, calling onData(data) for each event's data (multi-line data joined with
   * "\n"). onData returns true to stop reading early (e.g. at [DONE]). Partial lines and
   * multi-byte characters split across network chunks are buffered.
   */
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let data = [];
    let finished = false;

    const line = (text) => {
      if (text === "") {                       // blank line: the event is complete
        if (data.length) {
          const joined = data.join("\n");
          data = [];
          finished = onData(joined) === true;
        }
        return;
      }
      if (text.startsWith(":")) return;        // comment / keep-alive
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
    };

    try {
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) {
          buffer += decoder.decode();
          if (buffer) line(buffer);
          line("");
          break;
        }
        buffer += decoder.decode(value, { stream: true });
        // a "\r" at the very end may be the first half of "\r\n": keep it for the next chunk
        const lines = buffer.split(/\r\n|\n|\r(?!$)/);
        buffer = lines.pop();
        for (const l of lines) {
          line(l);
          if (finished) break;
        }
      }
    } catch (e) {
      reader.cancel().catch(() => {});
      throw e;
    }
    if (finished) reader.cancel().catch(() => {});
  }

  async function errorMessage(res) {
    const text = await res.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      const msg = (body && body.error && body.error.message) || (body && body.message);
      if (msg) return String(msg);
    } catch (e) { /* not JSON */ }
    return text.trim() || `HTTP ${res.status} ${res.statusText}`.trim();
  }

  function summary(usage, timings, finish) {
    const parts = [];
    if (usage && typeof usage.completion_tokens === "number") {
      const n = usage.completion_tokens;
      parts.push(`${n} token${n === 1 ? "" : "s"}`);
    }
    if (timings && typeof timings.gen_tok_s === "number") {
      parts.push(`${timings.gen_tok_s.toFixed(1)} tok/s`);
    }
    if (finish === "length") parts.push("token limit reached");
    return parts.length ? parts.join(" · ") : "done";
  }

  // ---- queued: until the first piece, ask /health whether every slot is busy ---------------

  /** Poll /health while a request waits for its first piece; says so when it is queued.
   *  Returns a function that stops the polling. */
  function watchQueue(ctl) {
    let stopped = false;
    let timer = null;
    async function check() {
      if (stopped) return;
      try {
        const res = await fetch("health", { cache: "no-store", signal: ctl.signal });
        const info = await res.json();
        if (stopped) return;
        const full = info.slots_total && info.slots_busy >= info.slots_total;
        if (full && info.waiting > 0) {
          const n = info.waiting;
          setStatus(`waiting for a free slot (${n} request${n > 1 ? "s" : ""} queued)…`, "queued");
        } else {
          setStatus("generating…");
        }
      } catch (e) {
        /* the request's own error handling reports a lost server */
      }
      if (!stopped) timer = setTimeout(check, 400);
    }
    timer = setTimeout(check, 250);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  // ---- send / stop -----------------------------------------------------------------------

  async function send() {
    if (controller || !ready) return;
    const prompt = ui.prompt.value;
    if (!prompt.trim()) {
      setStatus("type a question first", "error");
      ui.prompt.focus();
      return;
    }
    const ctl = new AbortController();
    controller = ctl;
    clearAnswer();
    ui.answer.classList.add("generating");
    updateControls();
    setStatus("generating…");

    let usage = null;
    let timings = null;
    let finish = null;
    let done = false;
    let unwatch = watchQueue(ctl);
    const started = () => {
      if (unwatch) {
        unwatch();
        unwatch = null;
        setStatus("generating…");
      }
    };
    try {
      const res = await fetch("v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({
          messages: [{ role: "user", content: prompt }],
          context_type: ui.context.value || undefined,
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: ctl.signal,
      });
      if (!res.ok) throw new Error(await errorMessage(res));
      if (!res.body) throw new Error("this browser cannot read streamed responses");
      started();
      await readEvents(res.body, (data) => {
        if (data === "[DONE]") {
          done = true;
          return true;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (e) {
          throw new Error("the server sent something that is not JSON: " + data.slice(0, 80));
        }
        if (chunk.error) throw new Error("interrupted — " + (chunk.error.message || "generation failed"));
        for (const choice of chunk.choices || []) {
          const content = choice.delta && choice.delta.content;
          if (content) appendAnswer(content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
        return false;
      });
      if (!done && !finish) {
        throw new Error("interrupted — the connection closed before the answer was complete");
      }
      if (finish === "cancelled" || finish === "error") {
        throw new Error("interrupted — the server stopped this answer before it was complete");
      }
      setStatus(summary(usage, timings, finish));
    } catch (e) {
      if (ctl.signal.aborted) {
        setStatus("stopped");
      } else {
        setStatus(e && e.message ? e.message : String(e), "error");
      }
    } finally {
      if (unwatch) unwatch();
      if (controller === ctl) controller = null;
      ui.answer.classList.remove("generating");
      updateControls();
    }
  }

  function stop() {
    if (controller) controller.abort();
  }

  // ---- wiring ----------------------------------------------------------------------------

  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  ui.stop.addEventListener("click", stop);
  ui.prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && controller) {
      ev.preventDefault();
      stop();
    }
  });

  // for tests and the console
  window.llmstream = Object.freeze({ appendAnswer, clearAnswer, send, stop, checkHealth });

  updateControls();
  checkHealth();
})();
