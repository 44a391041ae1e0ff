// restrl playground: posts a problem to /v1/solve with `stream: true`, reads the Server-Sent Events
// (`progress`, then `result` or `error`) from the response body and draws them: usage counters, the
// best program so far, the search tree node by node, and the final answer with its candidates.
// The body is a POST, so this uses fetch + a ReadableStream parser, not EventSource.
// Every URL is relative to the page: the page makes no request to any other origin.
"use strict";

(() => {
  const SOLVE_URL = "v1/solve";
  const USAGE_KEYS = ["samples", "policy_tokens", "cached_prompt_tokens", "value_calls", "wall_s"];
  const STOP_REASONS = {
    samples: "sample budget used",
    tokens: "token budget used",
    value_calls: "value-call budget used",
    deadline: "deadline reached",
    exhausted: "tree exhausted",
    solved: "solved: public tests pass",
    cancelled: "cancelled",
    done: "done",
  };
  // The server names the offending input in `error.field`; these are the form controls it maps to.
  const FIELD_INPUTS = {
    "problem": "statement",
    "problem.statement": "statement",
    "problem.starter_code": "starter-code",
    "problem.entry_point": "entry-point",
    "strategy": "strategy",
    "budget": "samples",
    "budget.samples": "samples",
    "budget.tokens": "tokens",
    "budget.deadline_s": "deadline",
    "max_tokens": "max-tokens",
    "search.max_tokens": "max-tokens",
    "seed": "seed",
  };

  const $ = (selector, root = document) => root.querySelector(selector);
  const form = $("#solve-form");
  const runButton = $("#run");
  const stopButton = $("#stop");
  const runsBox = $("#runs");
  const formError = $("#form-error");
  const compare = $("#compare");
  const apiKey = $("#api-key");
  const template = $("#run-template");

  let controller = null; // AbortController of the runs in flight, null when idle

  // ---- numbers and text -------------------------------------------------------------------

  /** The input's number, undefined when empty; text the browser could not parse goes as typed. */
  function optionalNumber(id) {
    const input = document.getElementById(id);
    const raw = input.value.trim();
    if (raw === "") return input.validity.badInput ? raw : undefined;
    const value = Number(raw);
    return Number.isFinite(value) ? value : raw;
  }

  function formatValue(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
  }

  function formatUsage(key, value) {
    if (typeof value !== "number") return "–";
    return key === "wall_s" ? value.toFixed(1) : String(value);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- the request --------------------------------------------------------------------------

  function buildBody(strategy) {
    const problem = { statement: $("#statement").value };
    const starter = $("#starter-code").value;
    const entryPoint = $("#entry-point").value.trim();
    if (starter.trim() !== "") problem.starter_code = starter;
    if (entryPoint !== "") problem.entry_point = entryPoint;
    const budget = { samples: optionalNumber("samples") };
    const tokens = optionalNumber("tokens");
    const deadline = optionalNumber("deadline");
    if (tokens !== undefined) budget.tokens = tokens;
    if (deadline !== undefined) budget.deadline_s = deadline;
    const body = { problem, strategy, budget, stream: true, return_tree: true };
    const maxTokens = optionalNumber("max-tokens");
    const seed = optionalNumber("seed");
    if (maxTokens !== undefined) body.max_tokens = maxTokens;
    if (seed !== undefined) body.seed = seed;
    return body;
  }

  function requestHeaders() {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = apiKey.value.trim();
    if (key !== "") headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  /** The server's error object ({type, message, field?}) from a non-2xx response. */
  async function errorFrom(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const status = `HTTP ${response.status}`;
    if (body && body.error && body.error.message) return { ...body.error, status };
    if (body && body.detail) {
      const message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      return { type: "http_error", message, status };
    }
    return { type: "http_error", message: response.statusText || "request failed", status };
  }

  // ---- Server-Sent Events over a fetch body -------------------------------------------------

  function parseBlock(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { type, data: data.join("\n") } : null;
  }

  async function* readEvents(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        buffer = buffer.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) !== -1) {
          const event = parseBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event) yield event;
        }
        if (done) {
          const last = parseBlock(buffer);
          if (last) yield last;
          return;
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // ---- one run panel ------------------------------------------------------------------------

  class Run {
    constructor(strategy, label) {
      this.strategy = strategy;
      this.root = template.content.firstElementChild.cloneNode(true);
      this.root.dataset.strategy = strategy;
      this.root.setAttribute("aria-label", `${label}: ${strategy}`);
      $(".run-title", this.root).textContent = label ? `${label} · ${strategy}` : strategy;
      this.tree = $(".tree", this.root);
      this.nodes = new Map(); // node id -> {item, summary, children, fields}
      this.progressEvents = 0;
      this.state = "running";
      this.setStatus("running", "Running…");
    }

    setStatus(state, text) {
      this.state = state;
      this.root.dataset.state = state;
      $(".run-status", this.root).textContent = text;
    }

    setUsage(usage, nodes) {
      for (const key of USAGE_KEYS) {
        if (usage && key in usage) $(`[data-usage="${key}"]`, this.root).textContent = formatUsage(key, usage[key]);
      }
      if (typeof nodes === "number") $('[data-usage="nodes"]', this.root).textContent = String(nodes);
    }

    setBest(code, value) {
      if (typeof code === "string" && code !== "") $(".best-code code", this.root).textContent = code;
      $(".best-value", this.root).textContent = typeof value === "number" ? `value ${formatValue(value)}` : "";
    }

    progress(data) {
      this.progressEvents += 1;
      this.root.dataset.progressEvents = String(this.progressEvents);
      this.setUsage(data.usage, data.nodes);
      this.setBest(data.best_code, data.best_value);
      // The stream carries only the nodes an expansion created. The search backs their visits and
      // values up to the expanded node and its ancestors (RESTRL_SPEC.md section 2); the page applies
      // the same rule so that N and V stay live. The result's tree replaces them with the server's.
      const backups = new Map(); // parent id -> {n, total}
      for (const node of data.new_nodes || []) {
        const known = this.nodes.get(node.id);
        const isNew = !known || known.placeholder;
        this.upsertNode(node);
        if (isNew && node.parent !== null && node.parent !== undefined && typeof node.visits === "number"
            && typeof node.value === "number") {
          const acc = backups.get(node.parent) || { n: 0, total: 0 };
          acc.n += node.visits;
          acc.total += node.value * node.visits;
          backups.set(node.parent, acc);
        }
      }
      for (const [parent, acc] of backups) this.backup(parent, acc.n, acc.total);
    }

    backup(id, n, total) {
      const seen = new Set();
      let entry = this.nodes.get(id);
      while (entry && !seen.has(entry)) {
        seen.add(entry);
        entry.visits += n;
        entry.valueSum += total;
        this.renderStats(entry);
        entry = entry.parent === null || entry.parent === undefined ? undefined : this.nodes.get(entry.parent);
      }
    }

    renderStats(entry) {
      const { fields } = entry;
      if (entry.visits > 0) {
        const value = entry.valueSum / entry.visits;
        fields.meter.value = Math.min(1, Math.max(0, value));
        fields.value.textContent = formatValue(value);
        fields.visits.textContent = `N ${entry.visits}`;
      }
      const line = fields.line.textContent;
      const terminal = entry.item.classList.contains("terminal") ? "; complete program" : "";
      entry.summary.setAttribute("aria-label", `${line}; value ${fields.value.textContent}; ${fields.visits.textContent || "no visits"}${terminal}`);
    }

    nodeElement(id) {
      let entry = this.nodes.get(id);
      if (entry) return entry;
      const item = el("li", "node");
      item.dataset.nodeId = String(id);
      const details = el("details", "leaf");
      details.open = true;
      const summary = el("summary");
      const meter = el("meter");
      meter.min = 0;
      meter.max = 1;
      const fields = {
        meter,
        value: el("span", "node-value", "–"),
        visits: el("span", "node-visits", ""),
        line: el("code", "node-line", "…"),
        terminal: el("span", "node-terminal", "end"),
      };
      fields.terminal.hidden = true;
      fields.line.classList.add("root-line");
      fields.line.textContent = "(root)"; // a parent the stream has not described (the root)
      summary.append(meter, fields.value, fields.visits, fields.line, fields.terminal);
      const children = el("ul", "children");
      details.append(summary, children);
      item.append(details);
      entry = { item, details, summary, children, fields, parent: undefined, placeholder: true, visits: 0, valueSum: 0 };
      this.nodes.set(id, entry);
      this.tree.append(item); // until its parent is known
      return entry;
    }

    upsertNode(node) {
      if (node === null || typeof node !== "object" || node.id === undefined) return;
      const entry = this.nodeElement(node.id);
      const parent = node.parent === undefined ? null : node.parent;
      if (entry.parent !== parent) {
        entry.parent = parent;
        if (parent === null) {
          this.tree.append(entry.item);
        } else {
          const parentEntry = this.nodeElement(parent);
          parentEntry.children.append(entry.item);
          parentEntry.details.classList.remove("leaf");
        }
      }
      const { fields } = entry;
      entry.placeholder = false;
      if (typeof node.visits === "number" && typeof node.value === "number") {
        entry.visits = node.visits;
        entry.valueSum = node.value * node.visits;
      }
      if (typeof node.line === "string") {
        const blank = node.line.trim() === "";
        const isRoot = parent === null && blank;
        fields.line.textContent = isRoot ? "(root: the starter code)" : blank ? "(blank line)" : node.line;
        fields.line.classList.toggle("root-line", blank);
        fields.line.title = node.line;
      }
      fields.terminal.hidden = !node.terminal;
      entry.item.classList.toggle("terminal", Boolean(node.terminal));
      this.renderStats(entry);
      $(".tree-empty", this.root).hidden = true;
    }

    treeNodes(tree) {
      if (Array.isArray(tree)) return tree;
      if (tree && Array.isArray(tree.nodes)) return tree.nodes;
      return [];
    }

    finish(result) {
      this.setUsage(result.usage, typeof result.nodes === "number" ? result.nodes : undefined);
      for (const node of this.treeNodes(result.tree)) this.upsertNode(node); // final visits and values
      const box = $(".final", this.root);
      const program = result.program ?? result.code;
      $(".final-program code", this.root).textContent =
        typeof program === "string" && program !== "" ? program : "(no program: the budget allowed no sample)";
      const reason = STOP_REASONS[result.stop_reason] || result.stop_reason || "done";
      const meta = [`value ${formatValue(result.value)}`, `stopped: ${reason}`];
      const policyVersion = result.policy_version ?? result.models?.policy;
      const valueVersion = result.value_version ?? result.models?.value;
      if (policyVersion || valueVersion) meta.push(`models: ${policyVersion || "?"} / ${valueVersion || "?"}`);
      if (Array.isArray(result.budget_capped) && result.budget_capped.length) {
        meta.push(`budget capped by the server: ${result.budget_capped.join(", ")}`);
      }
      const requestId = result.request_id ?? result.id;
      if (requestId) meta.push(`request ${requestId}`);
      $(".final-meta", this.root).textContent = meta.join(" · ");
      const list = $(".candidates", this.root);
      list.replaceChildren();
      const candidates = Array.isArray(result.candidates) ? result.candidates : [];
      for (const candidate of candidates) {
        const item = el("li", "candidate");
        const details = el("details");
        const parts = [`value ${formatValue(candidate.value)}`];
        if (typeof candidate.pass_fraction === "number") {
          parts.push(`public tests ${Math.round(candidate.pass_fraction * 100)}%`);
        }
        const pre = el("pre", "code");
        pre.append(el("code", "", candidate.program ?? candidate.code ?? ""));
        details.append(el("summary", "", parts.join(" · ")), pre);
        item.append(details);
        list.append(item);
      }
      $(".candidate-count", this.root).textContent = `(${candidates.length})`;
      box.hidden = false;
      if (typeof result.code === "string" || typeof result.program === "string") {
        this.setBest(result.code ?? result.program, result.value);
      }
      if (this.nodes.size === 0) $(".tree-empty", this.root).textContent = "This run streamed no tree nodes.";
      const wall = result.usage && typeof result.usage.wall_s === "number" ? ` in ${result.usage.wall_s.toFixed(1)} s` : "";
      this.setStatus("done", `Done${wall}: ${reason}.`);
    }

    fail(error) {
      const message = (error && error.message) || "unknown error";
      const parts = [error && error.status, error && error.type].filter(Boolean);
      const prefix = parts.length ? `${parts.join(" ")}: ` : "";
      const box = $(".run-error", this.root);
      box.textContent = `${prefix}${message}${error && error.field ? ` (field: ${error.field})` : ""}`;
      box.hidden = false;
      this.setStatus("error", "Failed.");
      markField(error && error.field, box);
    }

    stopped() {
      this.setStatus("stopped", "Stopped.");
    }
  }

  function markField(field, messageBox) {
    const id = field && (FIELD_INPUTS[field] || FIELD_INPUTS[field.split(".").slice(0, 2).join(".")]);
    const input = id && document.getElementById(id);
    if (!input) return;
    if (!messageBox.id) messageBox.id = `error-${Math.random().toString(36).slice(2)}`;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-errormessage", messageBox.id);
  }

  function clearFieldMarks() {
    for (const input of form.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-errormessage");
    }
    formError.hidden = true;
    formError.textContent = "";
  }

  // ---- running ------------------------------------------------------------------------------

  const EVENT_HANDLERS = {
    progress: (run, data) => {
      run.progress(data);
      return false;
    },
    result: (run, data) => {
      run.finish(data);
      return true;
    },
    error: (run, data) => {
      run.fail((data && data.error) || data);
      return true;
    },
  };

  async function runOne(run, body, signal) {
    let response;
    try {
      response = await fetch(SOLVE_URL, {
        method: "POST",
        headers: requestHeaders(),
        body: JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (err) {
      if (signal.aborted) run.stopped();
      else run.fail({ type: "network_error", message: `could not reach the server (${err.message})` });
      return;
    }
    if (!response.ok) {
      run.fail(await errorFrom(response));
      return;
    }
    const contentType = response.headers.get("content-type") || "";
    try {
      if (!contentType.includes("text/event-stream")) {
        run.finish(await response.json()); // a server that answered without streaming
        return;
      }
      for await (const event of readEvents(response.body)) {
        const handler = EVENT_HANDLERS[event.type];
        if (!handler) continue;
        if (handler(run, JSON.parse(event.data))) return;
      }
      run.fail({ type: "stream_error", message: "the stream ended without a result" });
    } catch (err) {
      if (signal.aborted) run.stopped();
      else run.fail({ type: "stream_error", message: `${err.name}: ${err.message}` });
    }
  }

  function setRunning(running) {
    runButton.disabled = running;
    stopButton.disabled = !running;
    form.setAttribute("aria-busy", String(running));
  }

  function stop() {
    if (controller) controller.abort();
  }

  function start() {
    stop();
    clearFieldMarks();
    if ($("#statement").value.trim() === "") {
      formError.textContent = "Enter a problem statement.";
      formError.hidden = false;
      $("#statement").setAttribute("aria-invalid", "true");
      $("#statement").focus();
      return;
    }
    const strategies = compare.checked ? [$("#strategy").value, $("#strategy-b").value] : [$("#strategy").value];
    const labels = strategies.length > 1 ? ["A", "B"] : [""];
    const runs = strategies.map((strategy, i) => new Run(strategy, labels[i]));
    runsBox.replaceChildren(...runs.map((run) => run.root));
    runsBox.classList.toggle("side-by-side", runs.length > 1);
    const current = new AbortController();
    controller = current;
    setRunning(true);
    Promise.allSettled(runs.map((run) => runOne(run, buildBody(run.strategy), current.signal))).then(() => {
      if (controller === current) {
        controller = null;
        setRunning(false);
      }
    });
  }

  // ---- wiring -------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) {
      event.preventDefault();
      stop();
    }
  });
  stopButton.addEventListener("click", stop);
  compare.addEventListener("change", () => {
    $("#strategy-b-field").hidden = !compare.checked;
  });
  $("#strategy-b-field").hidden = !compare.checked;
  try {
    apiKey.value = sessionStorage.getItem("restrl.apiKey") || "";
    apiKey.addEventListener("input", () => sessionStorage.setItem("restrl.apiKey", apiKey.value));
  } catch (_) {
    // storage disabled: the key lives in the field only
  }
})();
