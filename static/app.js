// llmstream web page: a conversation with the model, each answer streamed in and shown as Markdown.
// Talks to the same origin only, through relative URLs:
//   GET  health                -> {"status": "ok"|"loading"|"error", model, context_types, n_ctx, ...}
//   POST v1/chat/completions   -> server-sent events (data: {chunk} ... data: [DONE]); the whole
//                                 conversation is sent each turn, the context type (the system
//                                 prompt) in the request's `context_type` field
// Model text is never inserted as raw HTML: it goes through marked (raw HTML in it escaped, so it
// shows as text) and the HTML that comes out through DOMPurify, into a DOM fragment; without those
// two libraries (static/vendor/) it is shown as plain text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("ask"),
    prompt: $("prompt"),
    context: $("context-type"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
    model: $("model"),
    conversation: $("conversation"),
    empty: $("empty"),
    newChat: $("new-chat"),
    settingsToggle: $("settings-toggle"),
    settings: $("settings"),
    settingsReset: $("settings-reset"),
    apiKey: $("api-key"),
  };
  const SETTINGS_KEY = "llmstream.settings";
  const FIELDS = [   // settings: input id, request field, what a valid value is
    { id: "temperature", key: "temperature", label: "temperature", integer: false, min: 0, max: 2 },
    { id: "max-tokens", key: "max_tokens", label: "max tokens", integer: true, min: 1 },
    { id: "seed", key: "seed", label: "seed", integer: true, min: 0 },
  ];
  const RENDER_MS = 90;     // re-render a streaming answer's Markdown at most this often

  let ready = false;        // /health said "ok"
  let nCtx = null;          // the model's context window, from /health
  let controller = null;    // AbortController of the generation in progress, if any
  let healthTimer = null;
  let history = [];         // the conversation so far: [{role, content}], finished turns only
  let turnCount = 0;
  const turns = new WeakMap(); // <article> of a turn -> its state (the answer's text, ...)

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

  function nearBottom() {
    const el = document.scrollingElement || document.documentElement;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }

  function scrollToBottom() {
    const el = document.scrollingElement || document.documentElement;
    el.scrollTop = el.scrollHeight;
  }

  // ---- Markdown ----------------------------------------------------------------------------

  const markdown = (() => {
    const m = window.marked;
    const purify = window.DOMPurify;
    if (!m || typeof m.parse !== "function" || !purify || !purify.isSupported) return null;
    const escape = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;")
      .replace(/>/g, "&gt;").replace(/"/g, "&quot;");
    const renderer = new m.Renderer();
    renderer.html = (html) => escape(html);          // raw HTML the model writes is shown as text
    renderer.image = function (href, title, text) {  // no remote images: a link to it instead
      return m.Renderer.prototype.link.call(this, href, title, text || escape(href || ""));
    };
    const options = { renderer, gfm: true, breaks: true, headerIds: false, mangle: false };
    const config = {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select",
        "iframe", "object", "embed", "video", "audio"],
      FORBID_ATTR: ["style", "id", "name"],
      ADD_ATTR: ["target"],
    };
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    return (text) => purify.sanitize(m.parse(text, options), config);
  })();

  /** Show `text` (the answer so far, Markdown) in `el`. */
  function renderInto(el, text) {
    if (!markdown) {
      el.textContent = text;
      el.classList.add("plain");
      return;
    }
    try {
      el.replaceChildren(markdown(text));
    } catch (e) {
      el.textContent = text;
      el.classList.add("plain");
    }
  }

  /** A "Copy" button on each code block of a finished answer. */
  function addCodeCopyButtons(el) {
    for (const pre of el.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const wrap = document.createElement("div");
      wrap.className = "code-block";
      pre.replaceWith(wrap);
      wrap.appendChild(pre);
      const button = copyButton(() => code.textContent, "Copy code", "Copy this code block");
      button.classList.add("code-copy");
      wrap.appendChild(button);
    }
  }

  // ---- clipboard -----------------------------------------------------------------------------

  async function writeClipboard(text) {
    if (navigator.clipboard && typeof navigator.clipboard.writeText === "function") {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (e) { /* denied: try the old way */ }
    }
    // plain http on another machine is no "secure context": no navigator.clipboard there
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) { ok = false; }
    area.remove();
    return ok;
  }

  function copyButton(getText, label, ariaLabel) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = label;
    button.setAttribute("aria-label", ariaLabel);
    let timer = null;
    button.addEventListener("click", async () => {
      const ok = await writeClipboard(getText());
      button.textContent = ok ? "Copied" : "Copy failed";
      clearTimeout(timer);
      timer = setTimeout(() => { button.textContent = label; }, 1500);
    });
    return button;
  }

  // ---- the conversation --------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** A new turn in the page: the user's message and an (empty, streaming) answer. */
  function addTurn(prompt) {
    const n = ++turnCount;
    const article = el("article", "turn");
    article.setAttribute("aria-label", `Turn ${n}`);
    const user = el("div", "msg user");
    user.setAttribute("aria-label", "You");
    user.appendChild(el("div", "text", prompt));
    const answer = el("div", "msg answer generating");
    answer.setAttribute("aria-label", `Answer ${n}`);
    answer.setAttribute("aria-busy", "true");
    const content = el("div", "content");
    const meta = el("div", "meta");
    const stats = el("span", "stats");
    const turn = { n, prompt, text: "", article, answer, content, stats, lastRender: 0, timer: null };
    const copy = copyButton(() => turn.text, "Copy", `Copy answer ${n}`);
    copy.hidden = true;
    meta.append(stats, copy);
    answer.append(content, meta);
    article.append(user, answer);
    turn.copy = copy;
    turns.set(article, turn);
    ui.empty.hidden = true;
    const follow = nearBottom();
    ui.conversation.appendChild(article);
    if (follow) scrollToBottom();
    return turn;
  }

  function render(turn) {
    clearTimeout(turn.timer);
    turn.timer = null;
    turn.lastRender = performance.now();
    const follow = nearBottom();
    renderInto(turn.content, turn.text);
    if (follow) scrollToBottom();
  }

  /** Add a piece of the answer; the Markdown is re-rendered at most every RENDER_MS. */
  function appendPiece(turn, piece) {
    if (piece === undefined || piece === null || piece === "") return;
    turn.text += String(piece);
    if (turn.timer) return;
    const wait = Math.max(0, turn.lastRender + RENDER_MS - performance.now());
    turn.timer = setTimeout(() => render(turn), wait);
  }

  function finishTurn(turn, statsText) {
    render(turn);
    if (markdown) addCodeCopyButtons(turn.content);
    turn.answer.classList.remove("generating");
    turn.answer.removeAttribute("aria-busy");
    turn.stats.textContent = statsText;
    turn.copy.hidden = !turn.text;
  }

  function removeTurn(turn) {
    clearTimeout(turn.timer);
    turn.article.remove();
    turnCount--;
    ui.empty.hidden = ui.conversation.querySelector(".turn") !== null;
  }

  function newChat() {
    if (controller) controller.abort();
    history = [];
    turnCount = 0;
    for (const t of ui.conversation.querySelectorAll(".turn")) t.remove();
    ui.empty.hidden = false;
    if (ready) setStatus("new chat" + (nCtx ? ` · context window ${nCtx} tokens` : ""));
    ui.prompt.focus();
  }

  // ---- settings (kept in localStorage) -----------------------------------------------------

  function loadSettings() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {};
    } catch (e) { saved = {}; }
    for (const f of FIELDS) {
      const v = saved[f.key];
      $(f.id).value = typeof v === "number" || typeof v === "string" ? String(v) : "";
    }
    ui.apiKey.value = typeof saved.api_key === "string" ? saved.api_key : "";
  }

  function saveSettings() {
    const out = {};
    for (const f of FIELDS) {
      const v = $(f.id).value.trim();
      if (v !== "") out[f.key] = v;
    }
    if (ui.apiKey.value.trim()) out.api_key = ui.apiKey.value.trim();
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(out));
    } catch (e) { /* private mode: not remembered */ }
  }

  /** The settings as request fields; throws with a message naming the field that is wrong. */
  function settingsParams() {
    const out = {};
    for (const f of FIELDS) {
      const input = $(f.id);
      const raw = input.value.trim();
      input.removeAttribute("aria-invalid");
      if (raw === "" && !input.validity.badInput) continue;
      const v = Number(raw);
      const bad = raw === "" || !Number.isFinite(v) || (f.integer && !Number.isInteger(v)) ||
        v < f.min || (f.max !== undefined && v > f.max);
      if (bad) {
        input.setAttribute("aria-invalid", "true");
        const range = f.max !== undefined ? `between ${f.min} and ${f.max}` : `${f.min} or more`;
        const err = new Error(`Settings: ${f.label} must be ${f.integer ? "a whole number " : ""}` +
          `${range}, or empty for the server's default`);
        err.input = input;
        throw err;
      }
      out[f.key] = v;
    }
    return out;
  }

  function toggleSettings(open) {
    const show = open === undefined ? ui.settings.hidden : open;
    ui.settings.hidden = !show;
    ui.settingsToggle.setAttribute("aria-expanded", String(show));
  }

  // ---- health: model name, context types, "loading model…" -------------------------------

  function pollHealth(ms) {
    clearTimeout(healthTimer);
    healthTimer = setTimeout(checkHealth, ms);
  }

  function notReady(text) {
    ready = false;
    updateControls();
    setStatus(text, "error");
  }

  async function checkHealth() {
    let res;
    let info = {};
    try {
      res = await fetch("health", { cache: "no-store" });
      info = await res.json().catch(() => ({}));
    } catch (e) {
      notReady("the server is not reachable — is llmstream running? Retrying…");
      pollHealth(2000);
      return;
    }
    if (res.ok && info.status === "ok") {
      applyHealth(info);
    } else if (info.status === "loading" || info.status === "warming") {
      ready = false;
      updateControls();
      const l = info.loading;
      if (info.status === "warming") {
        setStatus("loading model… preparing the context prompts");
      } else if (l && l.total > 0) {
        const pct = Math.floor((100 * l.done) / l.total);
        setStatus(`loading model… ${pct} % (${Math.round(l.done / 2 ** 20)} of ${Math.round(l.total / 2 ** 20)} MB)`);
      } else {
        setStatus("loading model…");
      }
      pollHealth(1000);
    } else if (info.status === "error") {
      notReady("the model failed to load: " + (info.message || "unknown error"));
      pollHealth(5000);
    } else {
      notReady(`health check failed (HTTP ${res.status}) — retrying…`);
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
    nCtx = typeof info.n_ctx === "number" ? info.n_ctx : null;
    const wasReady = ready;
    ready = true;
    updateControls();
    if (!controller && !wasReady) {
      setStatus(nCtx ? `ready · context window ${nCtx} tokens` : "ready");
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

  // ---- failures: what went wrong, and what the person can do about it ----------------------

  class Failure extends Error {}

  function tooLongMessage(message, sentMaxTokens) {
    const num = (re) => {
      const m = re.exec(message || "");
      return m ? Number(m[1]) : null;
    };
    const promptTokens = num(/prompt is (\d+) tokens/);
    const ctx = num(/context of (\d+) tokens/) || nCtx;
    const window_ = ctx ? `the model's context window of ${ctx} tokens` : "the model's context window";
    const conversation = history.length ? "this conversation" : "this message";
    const size = promptTokens ? ` (${promptTokens} tokens)` : "";
    if (sentMaxTokens !== undefined && (!promptTokens || !ctx || promptTokens < ctx)) {
      const room = promptTokens && ctx ? ctx - promptTokens : null;
      return `Too long: ${conversation}${size} plus max tokens (${sentMaxTokens}) exceeds ` +
        `${window_}. Lower max tokens in Settings` + (room ? ` (to ${room} at most)` : "") +
        ", or empty it to let the server fit the answer in; or start a New chat.";
    }
    return `Too long: ${conversation}${size} does not fit in ${window_}. ` +
      (history.length ? "Start a New chat (the earlier turns are sent each time), or shorten your message."
        : "Shorten your message.");
  }

  /** The Failure for an HTTP error response. */
  async function httpFailure(res, sentMaxTokens) {
    const text = await res.text().catch(() => "");
    let message = "";
    let code = null;
    try {
      const body = JSON.parse(text);
      message = String((body && body.error && body.error.message) || (body && body.message) || "");
      code = body && body.error && body.error.code;
    } catch (e) { /* not JSON */ }
    if (!message) message = text.trim() || `HTTP ${res.status} ${res.statusText}`.trim();
    if (code === "context_length_exceeded") return new Failure(tooLongMessage(message, sentMaxTokens));
    if (code === "body_too_large" || res.status === 413) {
      return new Failure("Too long for the server: " + message +
        (history.length ? " — or start a New chat (the earlier turns are sent each time)." : ""));
    }
    if (res.status === 401) {
      toggleSettings(true);
      return new Failure(ui.apiKey.value.trim()
        ? "the server refused the API key: enter the key it was started with in Settings (API key)"
        : "this server needs an API key: enter it in Settings (API key) — the one it was started " +
          "with (--api-key or LLMSTREAM_API_KEY)");
    }
    if (res.status === 503 || res.status === 429) {
      return new Failure(`the server is busy or not ready: ${message} — send again in a moment`);
    }
    if (res.status === 408) return new Failure(`the server timed out reading the request: ${message}`);
    if (res.status >= 500) return new Failure(`the server failed: ${message}`);
    return new Failure(message);
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

  const seconds = (ms) => `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;

  /** The line under an answer: tokens, tokens/s, time to first token, total time. */
  function statsLine(usage, timings, finish, firstMs, totalMs, ending) {
    const parts = [];
    if (usage || timings) {
      const s = summary(usage, timings, null);
      if (s !== "done") parts.push(s);
    }
    if (firstMs !== null) parts.push(`first token ${seconds(firstMs)}`);
    parts.push(`${seconds(totalMs)} in all`);
    if (finish === "length") parts.push("token limit reached");
    if (ending) parts.push(ending);
    return parts.join(" · ");
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
      setStatus("type a message first", "error");
      ui.prompt.focus();
      return;
    }
    let params;
    try {
      params = settingsParams();
    } catch (e) {
      toggleSettings(true);
      setStatus(e.message, "error");
      if (e.input) e.input.focus();
      return;
    }
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = ui.apiKey.value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    const ctl = new AbortController();
    controller = ctl;
    const messages = history.concat([{ role: "user", content: prompt }]);
    const turn = addTurn(prompt);
    ui.prompt.value = "";
    updateControls();
    setStatus("generating…");

    let usage = null;
    let timings = null;
    let finish = null;
    let done = false;
    let phase = "connect";      // "connect" until the response headers, then "read"
    const t0 = performance.now();
    let firstMs = null;
    let unwatch = watchQueue(ctl);
    const started = () => {
      if (unwatch) {
        unwatch();
        unwatch = null;
        setStatus("generating…");
      }
    };
    let ending = "";
    try {
      let res;
      try {
        res = await fetch("v1/chat/completions", {
          method: "POST",
          headers,
          body: JSON.stringify({
            messages,
            context_type: ui.context.value || undefined,
            ...params,
            stream: true,
            stream_options: { include_usage: true },
          }),
          signal: ctl.signal,
        });
      } catch (e) {
        if (ctl.signal.aborted) throw e;
        throw new Failure("the server is not reachable — is llmstream still running? " +
          "Your message is back in the box: Send it again once the server is up.");
      }
      if (!res.ok) throw await httpFailure(res, params.max_tokens);
      if (!res.body) throw new Failure("this browser cannot read streamed responses");
      phase = "read";
      started();
      try {
        await readEvents(res.body, (data) => {
          if (data === "[DONE]") {
            done = true;
            return true;
          }
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch (e) {
            throw new Failure("the server sent something that is not JSON: " + data.slice(0, 80));
          }
          if (chunk.error) {
            throw new Failure("interrupted — " + (chunk.error.message || "generation failed"));
          }
          for (const choice of chunk.choices || []) {
            const content = choice.delta && choice.delta.content;
            if (content) {
              if (firstMs === null) firstMs = performance.now() - t0;
              appendPiece(turn, content);
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
          if (chunk.usage) usage = chunk.usage;
          if (chunk.timings) timings = chunk.timings;
          return false;
        });
      } catch (e) {
        if (e instanceof Failure || ctl.signal.aborted) throw e;
        throw new Failure("interrupted — the connection to the server was lost before the " +
          "answer was complete");
      }
      if (!done && !finish) {
        throw new Failure("interrupted — the connection closed before the answer was complete");
      }
      if (finish === "cancelled" || finish === "error") {
        throw new Failure("interrupted — the server stopped this answer before it was complete");
      }
      setStatus(summary(usage, timings, finish));
    } catch (e) {
      if (!turn.article.isConnected) {
        // "New chat" dropped this turn: nothing to say about it
      } else if (ctl.signal.aborted) {
        setStatus("stopped");
        ending = "stopped";
      } else {
        setStatus(e && e.message ? e.message : String(e), "error");
        ending = "interrupted";
        if (phase === "connect" && /not reachable/.test(String(e && e.message))) checkHealth();
      }
    } finally {
      if (unwatch) unwatch();
      const totalMs = performance.now() - t0;
      if (!turn.article.isConnected) {
        clearTimeout(turn.timer);
      } else if (turn.text || (phase === "read" && !ctl.signal.aborted)) {
        // an answer, whole or in part: it stays, and the next turn builds on it
        finishTurn(turn, statsLine(usage, timings, finish, firstMs, totalMs, ending));
        history = messages.concat([{ role: "assistant", content: turn.text }]);
      } else {
        // nothing came back: as if it was never sent, the message back in the box
        removeTurn(turn);
        if (!ui.prompt.value) ui.prompt.value = prompt;
      }
      if (controller === ctl) controller = null;
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
    ui.prompt.focus();
  });
  ui.stop.addEventListener("click", () => {
    stop();
    ui.prompt.focus();
  });
  ui.prompt.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || ev.isComposing || ev.keyCode === 229) return;
    if (ev.shiftKey || ev.altKey) return;            // Shift+Enter: a new line
    ev.preventDefault();                             // Enter, Ctrl+Enter: send
    send();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && controller) {
      ev.preventDefault();
      stop();
    }
  });
  ui.newChat.addEventListener("click", newChat);
  ui.settingsToggle.addEventListener("click", () => toggleSettings());
  ui.settingsReset.addEventListener("click", () => {
    for (const f of FIELDS) {
      $(f.id).value = "";
      $(f.id).removeAttribute("aria-invalid");
    }
    ui.apiKey.value = "";
    saveSettings();
  });
  for (const f of FIELDS) $(f.id).addEventListener("input", saveSettings);
  ui.apiKey.addEventListener("input", saveSettings);

  // for tests and the console
  window.llmstream = Object.freeze({
    send, stop, newChat, checkHealth,
    history: () => history.map((m) => ({ ...m })),
    answerText: () => {                 // the Markdown text of the latest answer
      const last = ui.conversation.querySelector(".turn:last-of-type");
      const turn = last && turns.get(last);
      return turn ? turn.text : "";
    },
    markdownEnabled: markdown !== null,
  });

  loadSettings();
  updateControls();
  checkHealth();
})();
