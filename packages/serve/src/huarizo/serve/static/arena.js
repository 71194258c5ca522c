// /arena: blind pairwise votes. The server decides the item and the order of its answers; the page never learns
// the models' names before the vote (the vote's answer reveals them). Every text is written with textContent.
"use strict";
(() => {
  const csrf = document.body.dataset.csrf;
  const $ = (id) => document.getElementById(id);
  const status = $("status");
  const voteButtons = [...document.querySelectorAll("#votes button")];
  const LABELS = { A: "A is better", B: "B is better", tie: "a tie", both_bad: "both are bad" };
  let current = null; // the item on screen
  let total = null;

  function say(text, problem = false) {
    status.textContent = text;
    status.classList.toggle("problem", problem);
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, body) {
    const init = body === undefined
      ? { credentials: "same-origin" }
      : {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify(body),
          credentials: "same-origin",
        };
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = response.status === 401
        ? "Your session has ended: reload the page (and log in)."
        : data?.error?.message || `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status);
    }
    return data;
  }

  function progress(voted, onItem) {
    const text = $("progress-text");
    if (total === null) {
      text.textContent = `${voted} vote${voted === 1 ? "" : "s"} so far`;
      $("progress-bar").parentElement.hidden = true;
      return;
    }
    text.textContent = onItem ? `Item ${voted + 1} of ${total}` : `${voted} of ${total} voted`;
    $("progress-bar").style.width = `${(100 * voted) / total}%`;
  }

  function turns(container, texts, label) {
    container.replaceChildren();
    texts.forEach((value, i) => {
      if (texts.length > 1) {
        const head = document.createElement("div");
        head.className = "turn";
        head.textContent = `${label} ${i + 1}`;
        container.append(head);
      }
      const body = document.createElement("div");
      body.className = "text";
      body.textContent = value;
      container.append(body);
    });
  }

  function show(data) {
    total = data.total;
    const item = data.item;
    current = item;
    $("ask").hidden = true;
    $("done").hidden = true;
    if (!item) {
      $("item").hidden = true;
      if (data.free) {
        $("ask").hidden = false;
        $("ask-prompt").focus();
      } else {
        $("done").hidden = false;
        $("done-text").textContent = `You voted on all ${data.total} items. Thank you!`;
      }
      progress(data.voted, false);
      return;
    }
    $("item-id").textContent = `#${item.item}`;
    turns($("question"), item.turns, "Turn");
    turns($("body-a"), item.answers[0], "Turn");
    turns($("body-b"), item.answers[1], "Turn");
    for (const side of ["a", "b"]) {
      $(`reveal-${side}`).textContent = "";
      $(`answer-${side}`).classList.remove("won", "lost-both");
      $(`body-${side}`).scrollTop = 0;
    }
    for (const button of voteButtons) {
      button.disabled = false;
      button.classList.remove("chosen");
    }
    $("after").hidden = true;
    $("verdict").textContent = "";
    $("item").hidden = false;
    progress(data.voted, true);
    window.scrollTo(0, 0);
  }

  async function load(note = "") {
    say("Loading the next item… (live answers are written first)");
    try {
      show(await api("/arena/api/next"));
      say(note);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function vote(choice) {
    if (!current || voteButtons[0].disabled) return;
    for (const button of voteButtons) button.disabled = true;
    try {
      const record = await api("/arena/api/vote", { item: current.item, vote: choice });
      reveal(record);
    } catch (err) {
      if (err.status === 409) {
        await load(`${err.message}: on to the next item.`);
        return;
      }
      for (const button of voteButtons) button.disabled = false;
      say(err.message, true);
    }
  }

  function reveal(record) {
    const [a, b] = record.shown;
    $("reveal-a").textContent = a;
    $("reveal-b").textContent = b;
    voteButtons.find((button) => button.dataset.vote === record.vote)?.classList.add("chosen");
    if (record.vote === "A") $("answer-a").classList.add("won");
    if (record.vote === "B") $("answer-b").classList.add("won");
    if (record.vote === "both_bad") for (const side of ["a", "b"]) $(`answer-${side}`).classList.add("lost-both");
    $("verdict").textContent = `You voted: ${LABELS[record.vote]}. A was ${a}, B was ${b}.`;
    $("after").hidden = false;
    $("next").focus();
    progress(record.voted, false);
    say("Vote saved.");
  }

  async function ask(event) {
    event.preventDefault();
    const text = $("ask-prompt").value.trim();
    if (!text) return;
    $("ask-send").disabled = true;
    say("Both models are answering… (the answers appear together)");
    try {
      show(await api("/arena/api/ask", { prompt: text }));
      $("ask-prompt").value = "";
      say("");
    } catch (err) {
      say(err.message, true);
    } finally {
      $("ask-send").disabled = false;
    }
  }

  for (const button of voteButtons) button.addEventListener("click", () => vote(button.dataset.vote));
  $("next").addEventListener("click", () => load());
  $("ask").addEventListener("submit", ask);
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("textarea, input") || event.ctrlKey || event.metaKey || event.altKey) return;
    const keyed = { 1: "A", 2: "tie", 3: "both_bad", 4: "B" }[event.key];
    if (keyed && !$("item").hidden && $("after").hidden) vote(keyed);
    else if (event.key === "Enter" && !$("after").hidden && !event.target.closest("button")) load();
  });
  load();
})();
