// /ui: chat with the served model through its OpenAI API (/v1/chat/completions, streamed).
// Every text, the model's included, is written with textContent: nothing it says is ever parsed as HTML.
"use strict";
(() => {
  const csrf = document.body.dataset.csrf;
  const $ = (id) => document.getElementById(id);
  const model = $("chat").dataset.model;
  const messages = $("messages");
  const empty = $("empty");
  const prompt = $("prompt");
  const sendButton = $("send");
  const stopButton = $("stop");
  const status = $("status");
  let history = []; // {role, content}: the conversation sent with each request
  let controller = null; // the request in flight
  let conversation = 0; // counts resets

  function say(text, problem = false) {
    status.textContent = text;
    status.classList.toggle("problem", problem);
  }

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function addMessage(role, text) {
    empty.hidden = true;
    const box = document.createElement("div");
    box.className = `msg ${role}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "You" : model;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    box.append(who, body);
    const note = document.createElement("span");
    note.className = "note";
    if (role === "assistant") {
      const tools = document.createElement("div");
      tools.className = "tools";
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy";
      copy.textContent = "Copy";
      copy.addEventListener("click", () => copyText(body.textContent, note));
      tools.append(copy, note);
      box.append(tools);
    }
    messages.append(box);
    messages.scrollTop = messages.scrollHeight;
    return { box, body, note };
  }

  async function copyText(text, note) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = document.createElement("textarea"); // older browsers, or no clipboard permission
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    note.textContent = "Copied";
  }

  async function errorOf(response) {
    if (response.status === 401) return "Your session has ended: reload the page (and log in).";
    try {
      const data = await response.json();
      return data.error?.message || `${response.status} ${response.statusText}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function busy(on) {
    sendButton.disabled = on;
    stopButton.disabled = !on;
  }

  function request() {
    const system = $("system").value.trim();
    return {
      model,
      messages: system ? [{ role: "system", content: system }, ...history] : history,
      stream: true,
      temperature: Number($("temperature").value),
      max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value))),
    };
  }

  async function send(event) {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    prompt.value = "";
    history.push({ role: "user", content: text });
    const asked = addMessage("user", text);
    const view = addMessage("assistant", "");
    view.box.classList.add("streaming");
    const mine = (controller = new AbortController());
    const started = conversation;
    busy(true);
    say("");
    let answer = "";
    let failed = false;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(request()),
        signal: mine.signal,
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error(await errorOf(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
            const choice = JSON.parse(line.slice(6)).choices?.[0];
            const delta = choice?.delta?.content;
            if (delta) {
              const follow = nearBottom();
              answer += delta;
              view.body.textContent = answer;
              if (follow) messages.scrollTop = messages.scrollHeight;
            }
            if (choice?.finish_reason === "length") view.note.textContent = "Stopped at the token limit";
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") {
        view.note.textContent = "Stopped";
      } else {
        failed = true;
        view.box.classList.add("error");
        view.body.textContent = answer || err.message;
        say(err.message, true);
      }
    } finally {
      view.box.classList.remove("streaming");
      if (controller === mine) controller = null;
      busy(false);
      prompt.focus();
    }
    if (conversation !== started) return; // reset while answering: that conversation is gone
    if (answer && !failed) {
      history.push({ role: "assistant", content: answer }); // a stopped answer is kept as far as it was written
    } else {
      history.pop(); // no answer: the question leaves the conversation
      asked.box.classList.add("failed");
      asked.note.textContent = "";
      if (!failed) view.box.remove();
    }
  }

  function reset() {
    conversation += 1;
    controller?.abort();
    history = [];
    for (const node of [...messages.children]) if (node !== empty) node.remove();
    empty.hidden = false;
    say("New conversation.");
    prompt.focus();
  }

  $("composer").addEventListener("submit", send);
  stopButton.addEventListener("click", () => controller?.abort());
  $("reset").addEventListener("click", reset);
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  prompt.focus();
})();
