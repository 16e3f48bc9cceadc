// The loop both pages run (page.html compares two responses, rate.html rates one): fetch the next item, show it,
// send the person's answer, move on; while the server is away, say so and try again. Model text is set with
// textContent only, so a response holding HTML or <script> shows as text.
"use strict";

// page: {nameInput, nextUrl, postUrl, keysHint, nameHint,
//        show(item) puts the item's text on the page (item null: clears it),
//        progress(body) -> [done, total, noun], idle(done, total) -> [message, seconds until a new look or null],
//        answer(item, choice, name) -> the body to post, choiceFor(key) -> a choice or undefined}
function runQueuePage(page) {
  const session = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
  const nameInput = document.getElementById(page.nameInput);
  let current = null;
  let sending = false;

  const name = () => nameInput.value.trim();
  function say(text, isError) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.className = isError ? "error" : "";
  }
  function refresh() {
    const ready = current !== null && name() !== "" && !sending;
    document.querySelectorAll("#buttons button").forEach((b) => { b.disabled = !ready; });
  }
  function hint() {
    if (current !== null) say(name() === "" ? page.nameHint : page.keysHint, false);
  }
  function serverAway(what) {
    current = null; refresh();
    say(`The server is not answering${what}. Trying again every 2 s.`, true);
    setTimeout(loadNext, 2000);
  }

  function show(body) {
    const [done, total, noun] = page.progress(body);
    document.getElementById("progress-text").textContent = `${done} / ${total} ${noun}`;
    document.getElementById("progress").max = Math.max(total, 1);
    document.getElementById("progress").value = done;
    current = body.item;
    page.show(current);
    if (current === null) {
      const [message, again] = page.idle(done, total);
      say(message, false);
      if (again !== null) setTimeout(loadNext, again * 1000);
    }
    hint();
    refresh();
  }

  async function loadNext() {
    try {
      const response = await fetch(`${page.nextUrl}?session=${encodeURIComponent(session)}`);
      if (!response.ok) { say(`Could not load the next item (${response.status}).`, true); return; }
      show(await response.json());
    } catch (err) {
      serverAway("");
    }
  }

  async function send(choice) {
    if (choice === undefined || current === null || sending || name() === "") return;
    sending = true; refresh();
    try {
      const response = await fetch(page.postUrl, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ session, ...page.answer(current, choice, name()) }),
      });
      if (!response.ok && response.status !== 409) {  // 409: someone answered this item already, move on
        const detail = await response.json().catch(() => ({}));
        say(`Not saved (${response.status}): ${JSON.stringify(detail.detail || "")}`, true);
        return;
      }
      await loadNext();
    } catch (err) {
      serverAway("; that answer was not saved");
    } finally {
      sending = false; refresh();
    }
  }

  nameInput.value = localStorage.getItem("rlhf-labeller") || "";
  nameInput.addEventListener("input", () => { localStorage.setItem("rlhf-labeller", name()); refresh(); hint(); });
  // Enter leaves the name field, so the next keys answer.
  nameInput.addEventListener("keydown", (event) => { if (event.key === "Enter") nameInput.blur(); });
  document.querySelectorAll("#buttons button").forEach((b) => b.addEventListener("click", () => send(b.dataset.choice)));
  document.addEventListener("keydown", (event) => {
    if (event.target === nameInput || event.ctrlKey || event.metaKey || event.altKey) return;
    const choice = page.choiceFor(event.key);
    if (choice !== undefined) { event.preventDefault(); send(choice); }
  });
  loadNext();
}
