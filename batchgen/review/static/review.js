// batchgen review: the page's behaviour, plain JavaScript, no library, nothing from outside.
// It polls /api/results (the ledger may still be filling) for the first results under the
// filters (the server filters: a ledger may hold a million jobs), PAGE more at a time on
// "Show more", keeps one card per job and updates it in place (a playing video keeps
// playing), and posts verdicts to /api/verdict.
// Text from the ledger is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const PAGE = 200;       // results asked for at first, and added by "Show more"
const TYPING_MS = 300;  // the search box asks the server once typing pauses
const state = {
  version: null,
  cards: new Map(),     // "campaign/id" -> card element (with ._result)
  groups: new Map(),    // group key -> section element
  current: null,        // the card the keys act on
  counts: null,
  ledger: "",
  limit: PAGE,          // results asked for
  data: null,           // the last answer (total_jobs, shown, more, campaigns, models)
  asked: 0,             // requests sent; an answer older than the last one shown is dropped
  shownAnswer: 0,
};
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// -- fetching ------------------------------------------------------------------------------

// The filters the server applies: each select's and the search box's value.
const SERVER_FILTERS = { campaign: "f-campaign", status: "f-status", model: "f-model",
  tag: "f-tag", verdict: "f-verdict", q: "f-text" };

function query(force) {
  const params = new URLSearchParams({ limit: String(state.limit) });
  for (const [name, id] of Object.entries(SERVER_FILTERS)) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  if (state.version && !force) params.set("since", state.version);
  return "?" + params.toString();
}

async function refresh(force) {
  const mine = ++state.asked;
  const response = await fetch("/api/results" + query(force), { cache: "no-store" });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
  if (mine < state.shownAnswer) return;  // a later request's answer is shown already
  if (data.unchanged) return;
  state.shownAnswer = mine;
  state.version = data.version;
  state.counts = data.counts;
  state.ledger = data.ledger;
  state.data = data;
  render(data.groups);
  $("more").hidden = !data.more;
  document.body.dataset.version = data.version;
  document.body.dataset.ready = "1";
}

// A filter changed: ask the server again, from the first page.
function filtersChanged() {
  state.limit = PAGE;
  applyFilters();
  refresh(true).catch(() => {});
}

let typingTimer = null;
function typed() {
  clearTimeout(typingTimer);
  typingTimer = setTimeout(filtersChanged, TYPING_MS);
}

function showMore() {
  state.limit += PAGE;
  refresh(true).catch(() => {});
}

function poll() {
  refresh(false)
    .then(() => document.body.classList.remove("offline"))
    .catch((error) => {
      document.body.classList.add("offline");
      $("summary").textContent = "cannot reach the review server (" + error.message + "); retrying…";
    })
    .finally(() => setTimeout(poll, POLL_MS));
}

// -- rendering -----------------------------------------------------------------------------

function render(groups) {
  const main = $("groups");
  const seenGroups = new Set();
  const seenCards = new Set();
  groups.forEach((group, gi) => {
    let section = state.groups.get(group.key);
    if (!section) {
      section = el("section", "group");
      const heading = el("h2");
      heading.append(el("span", "campaign", group.campaign), el("span", "prompt", group.prompt));
      section.append(heading, el("div", "row"));
      state.groups.set(group.key, section);
    }
    placeAt(main, section, gi);
    seenGroups.add(group.key);
    const row = section.querySelector(".row");
    group.results.forEach((result, ri) => {
      let card = state.cards.get(result.key);
      if (!card) {
        card = makeCard(result);
        state.cards.set(result.key, card);
      }
      update(card, result);
      placeAt(row, card, ri);
      seenCards.add(result.key);
    });
  });
  for (const [key, card] of state.cards) {
    if (!seenCards.has(key)) { card.remove(); state.cards.delete(key); }
  }
  for (const [key, section] of state.groups) {
    if (!seenGroups.has(key)) { section.remove(); state.groups.delete(key); }
  }
  fillChoices();
  applyFilters();
}

// Move a node only when it is not already in place: moving a video pauses it.
function placeAt(parent, node, index) {
  if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] || null);
}

function makeCard(result) {
  const card = el("article", "card");
  card.tabIndex = -1;
  card.dataset.key = result.key;
  const meta = el("div", "meta");
  const title = el("div", "title");
  title.append(el("span", "id"), el("span", "badge"));
  const actions = el("div", "actions");
  const approve = el("button", "approve", "Approve");
  const reject = el("button", "reject", "Reject");
  const note = el("button", "note-button", "Note");
  approve.type = reject.type = note.type = "button";
  approve.title = "a";
  reject.title = "r";
  note.title = "n";
  approve.addEventListener("click", () => { setCurrent(card); judge(card, "approved"); });
  reject.addEventListener("click", () => { setCurrent(card); rejectWithNote(card); });
  note.addEventListener("click", () => { setCurrent(card); editNote(card); });
  actions.append(approve, reject, note);
  meta.append(title, el("div", "facts"), el("div", "tags"), el("div", "state"), el("div", "note"), actions);
  card.append(el("div", "media"), meta);
  card.addEventListener("mouseenter", () => {
    const video = card.querySelector("video");
    if (video) video.controls = true;
  });
  card.addEventListener("mouseleave", () => {
    const video = card.querySelector("video");
    if (video && card !== state.current) video.controls = false;
  });
  card.addEventListener("click", (event) => {
    if (!event.target.closest("button, video")) setCurrent(card, false);
  });
  return card;
}

function verdictOf(result) {
  if (result.verdict) return result.verdict;
  return result.status === "completed" ? "unreviewed" : "none";
}

function update(card, result) {
  card._result = result;
  card.dataset.status = result.status;
  card.dataset.verdict = verdictOf(result);
  card.querySelector(".id").textContent = result.id;
  const badge = card.querySelector(".badge");
  badge.className = "badge " + card.dataset.verdict;
  badge.textContent = card.dataset.verdict === "none" ? "" :
    card.dataset.verdict === "unreviewed" ? "to review" : result.verdict;
  card.querySelector(".facts").textContent = facts(result);
  const tags = card.querySelector(".tags");
  const tagText = result.tags.join("\u0000");
  if (tags.dataset.text !== tagText) {
    tags.dataset.text = tagText;
    tags.replaceChildren(...result.tags.map((tag) => el("span", "", tag)));
  }
  card.querySelector(".state").textContent = stateText(result);
  card.querySelector(".note").textContent = result.note || "";
  const judgeable = result.status === "completed" && !!result.task_id;
  card.querySelectorAll(".actions button").forEach((b) => { b.disabled = !judgeable; });
  updateMedia(card, result);
}

function facts(result) {
  const parts = [result.model + (result.variant ? " (" + result.variant + ")" : "")];
  if (result.duration) parts.push(result.duration + " s");
  if (result.resolution) parts.push(result.resolution);
  if (result.ratio) parts.push(result.ratio);
  parts.push("$" + result.cost_usd);
  parts.push(result.attempts + (result.attempts === 1 ? " attempt" : " attempts"));
  return parts.join(" · ");
}

function stateText(result) {
  if (result.status === "completed") return "";
  let text = result.status;
  if (result.status === "running" && result.progress !== null) text += " " + result.progress + "%";
  if (result.reason) text += " (" + result.reason + ")";
  if (result.error) text += ": " + result.error;
  return text;
}

function updateMedia(card, result) {
  const box = card.querySelector(".media");
  const signature = JSON.stringify(result.media) + "|" + (result.media.length ? "" : stateText(result));
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  const nodes = [];
  for (const item of result.media.slice(0, 1)) {  // the card shows the first file
    let media;
    if (item.type === "video") {
      media = el("video");
      media.controls = card === state.current;
      media.muted = true;
      media.loop = true;
      media.playsInline = true;
      media.preload = "metadata";  // hundreds of cards: fetch each video's start only
    } else {
      media = el("img");
      media.alt = result.prompt;
      media.decoding = "async";
      media.loading = "lazy";
    }
    media.src = item.src;
    media.dataset.local = item.local ? "1" : "0";
    media.addEventListener("error", () => {
      box.append(el("div", "broken", item.local
        ? "the saved file could not be shown"
        : "not loaded: the service's URL may have expired (`batchgen download` saves files)"));
    });
    nodes.push(media);
    if (!item.local) {
      const mark = el("span", "remote", "not saved locally: from the service's URL");
      mark.title = item.src;
      nodes.push(mark);
    }
  }
  if (result.media.length > 1) nodes.push(el("span", "remote", result.media.length + " files"));
  if (!nodes.length) {
    nodes.push(el("div", "placeholder", result.status === "completed"
      ? "no file to show" : stateText(result)));
  }
  box.replaceChildren(...nodes);
}

// -- filters -------------------------------------------------------------------------------

const FILTERS = ["f-campaign", "f-status", "f-model", "f-tag", "f-verdict", "f-text"];

// Campaigns and models from the server (all of them, not only those shown); tags from the
// results shown (listing every tag of a million jobs would read them all).
function fillChoices() {
  const results = [...state.cards.values()].map((card) => card._result);
  const data = state.data || {};
  setOptions($("f-campaign"), data.campaigns || results.map((r) => r.campaign));
  setOptions($("f-model"), data.models || results.map((r) => r.model));
  setOptions($("f-tag"), results.flatMap((r) => r.tags));
}

function setOptions(select, values) {
  const chosen = select.value;
  const wanted = [...new Set(chosen ? [...values, chosen] : values)].sort();
  const have = [...select.options].slice(1).map((o) => o.value);
  if (wanted.join("\u0000") === have.join("\u0000")) return;
  select.replaceChildren(el("option", "", "all"), ...wanted.map((v) => {
    const option = el("option", "", v);
    option.value = v;
    return option;
  }));
  select.firstChild.value = "";
  select.value = chosen;
}

function matches(card) {
  const r = card._result;
  const f = (id) => $(id).value;
  if (f("f-campaign") && r.campaign !== f("f-campaign")) return false;
  if (f("f-status") && r.status !== f("f-status")) return false;
  if (f("f-model") && r.model !== f("f-model")) return false;
  if (f("f-tag") && !r.tags.includes(f("f-tag"))) return false;
  if (f("f-verdict") && verdictOf(r) !== f("f-verdict")) return false;
  const text = f("f-text").trim().toLowerCase();
  if (text && !(r.prompt.toLowerCase().includes(text) || r.id.toLowerCase().includes(text))) return false;
  return true;
}

function applyFilters() {
  let shown = 0;
  for (const section of state.groups.values()) {
    let visible = 0;
    for (const card of section.querySelectorAll("article.card")) {
      card.hidden = !matches(card);
      if (!card.hidden) visible += 1;
    }
    section.hidden = visible === 0;
    shown += visible;
  }
  const filtered = FILTERS.some((id) => $(id).value.trim());
  $("empty").hidden = shown > 0 || (state.cards.size === 0 && !filtered);
  if (!state.current || state.current.hidden || !state.current.isConnected) {
    setCurrent(visibleCards()[0] || null, false);
  }
  summary(shown);
}

function summary(shown) {
  const c = state.counts || { approved: 0, rejected: 0, unreviewed: 0 };
  const data = state.data || {};
  const total = data.total_jobs === undefined ? state.cards.size : data.total_jobs;
  $("summary").textContent = [
    total.toLocaleString("en") + " jobs",
    shown + " shown" + (data.more ? " (more below)" : ""),
    c.approved + " approved", c.rejected + " rejected", c.unreviewed + " to review",
    "ledger " + state.ledger,
  ].join(" · ");
}

function visibleCards() {
  return [...document.querySelectorAll("article.card")].filter((card) => !card.hidden);
}

// -- the current card and verdicts ---------------------------------------------------------

function setCurrent(card, scroll = true) {
  if (state.current === card) return;
  if (state.current) {
    state.current.classList.remove("current");
    const video = state.current.querySelector("video");
    if (video) { video.pause(); video.controls = false; }
  }
  state.current = card;
  if (!card) return;
  card.classList.add("current");
  if (scroll) card.scrollIntoView({ block: "nearest", inline: "nearest" });
  const video = card.querySelector("video");
  if (video) {
    video.controls = true;  // controls on the current card only: the others show the picture
    video.play().catch(() => {});  // muted: browsers allow it
  }
}

function move(step) {
  const cards = visibleCards();
  if (!cards.length) return;
  const at = cards.indexOf(state.current);
  const next = at < 0 ? 0 : Math.min(cards.length - 1, Math.max(0, at + step));
  setCurrent(cards[next]);
}

function nextAfter(card) {
  const cards = visibleCards();
  return cards[cards.indexOf(card) + 1] || null;
}

async function judge(card, verdict, note, advance = true) {
  const result = card._result;
  if (result.status !== "completed" || !result.task_id) return false;
  const next = nextAfter(card);
  const body = {
    campaign: result.campaign, job_id: result.id, task_id: result.task_id,
    verdict: verdict, note: note === undefined ? result.note : note,
  };
  let response, data;
  try {
    response = await fetch("/api/verdict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    data = await response.json();
  } catch (error) {
    toast("not saved: " + error.message, true);
    return false;
  }
  if (!response.ok) {
    toast("not saved: " + (data.error || "HTTP " + response.status), true);
    if (response.status === 409) refresh(true).catch(() => {});
    return false;
  }
  update(card, { ...result, verdict: data.verdict, note: data.note, verdict_at: data.at });
  toast((data.verdict || "verdict withdrawn") + ": " + result.id + (data.note ? " (note saved)" : ""));
  if (advance && state.current === card && next && next.isConnected) setCurrent(next);
  refresh(false).catch(() => {});  // the counts, and anything a run added meanwhile
  return true;
}

function rejectWithNote(card) {
  askNote(card, "Reject " + card._result.id, (note) => judge(card, "rejected", note),
    () => judge(card, "rejected"));
}

function editNote(card) {
  const result = card._result;
  if (result.status !== "completed") return;
  askNote(card, "Note on " + result.id,
    (note) => judge(card, result.verdict || null, note, false), null);
}

let noteDone = null;
function askNote(card, title, onSave, onCancel) {
  const box = $("note-box");
  $("note-title").textContent = title;
  $("note-for").textContent = card._result.prompt;
  $("note-text").value = card._result.note || "";
  noteDone = { onSave, onCancel, card };
  box.hidden = false;
  $("note-text").focus();
}

function closeNote(save) {
  const done = noteDone;
  noteDone = null;
  $("note-box").hidden = true;
  if (!done) return;
  done.card.focus({ preventScroll: true });
  if (save) done.onSave($("note-text").value);
  else if (done.onCancel) done.onCancel();
}

let toastTimer = null;
function toast(text, error) {
  const box = $("toast");
  box.textContent = text;
  box.classList.toggle("error", !!error);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, error ? 6000 : 2000);
}

// -- keys ----------------------------------------------------------------------------------

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (!$("note-box").hidden) {
    if (event.key === "Escape") { event.preventDefault(); closeNote(false); }
    else if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); closeNote(true); }
    return;
  }
  if (!$("help").hidden) {
    if (event.key === "Escape" || event.key === "?") { event.preventDefault(); $("help").hidden = true; }
    return;
  }
  const typing = event.target.closest && event.target.closest("input, textarea, select");
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const card = state.current;
  switch (event.key) {
    case "j": case "ArrowRight": move(1); break;
    case "k": case "ArrowLeft": move(-1); break;
    case "g": setCurrent(visibleCards()[0] || null); break;
    case "G": setCurrent(visibleCards().slice(-1)[0] || null); break;
    case "a": if (card) judge(card, "approved"); break;
    case "r": if (card && card._result.status === "completed") rejectWithNote(card); break;
    case "n": if (card) editNote(card); break;
    case "u": if (card) judge(card, null, undefined, false); break;
    case " ": {
      const video = card && card.querySelector("video");
      if (!video) return;
      if (video.paused) video.play().catch(() => {}); else video.pause();
      break;
    }
    case "/": $("f-text").focus(); break;
    case "?": $("help").hidden = false; break;
    default: return;
  }
  event.preventDefault();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of FILTERS) {  // a select says "change" (also when a script picks), a box "input"
    if (id === "f-text") $(id).addEventListener("input", typed);
    else $(id).addEventListener("change", filtersChanged);
  }
  $("more-button").addEventListener("click", showMore);
  document.addEventListener("keydown", onKey);
  $("help-button").addEventListener("click", () => { $("help").hidden = false; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  $("note-save").addEventListener("click", () => closeNote(true));
  $("note-cancel").addEventListener("click", () => closeNote(false));
  poll();
});
