"use strict";
// The page of `selfmm serve`: submit a clip, show its scores, keep earlier results in a table.
// Same-origin requests only, so a token given at the browser's login prompt goes along.

const $ = (id) => document.getElementById(id);
let range = [-3, 3];
let band = 0.3;
let count = 0;

function fmt(x) {
  return (x >= 0 ? "+" : "") + x.toFixed(3);
}

// Position of a score on the label scale, in percent of the scale's width.
function position(x) {
  const clipped = Math.min(Math.max(x, range[0]), range[1]);
  return (100 * (clipped - range[0])) / (range[1] - range[0]);
}

function drawBar(element, x) {
  const zero = position(0);
  const at = position(x);
  element.style.left = Math.min(zero, at) + "%";
  element.style.width = Math.abs(at - zero) + "%";
  element.classList.toggle("negative", x < 0);
}

async function loadInfo() {
  const response = await fetch("/info");
  if (!response.ok) {
    $("run-info").textContent = "Could not read the run (" + response.status + ")";
    return;
  }
  const info = await response.json();
  range = info.label_range;
  band = info.neutral_band;
  const speech = info.speech_recognition;
  $("run-info").textContent = `${info.dataset} run, seed ${info.seed}, labels from ${range[0]} to ` +
    `${range[1]}; videos up to ${info.limits.max_seconds} s and ${info.limits.max_upload_mb} MB; ` +
    (speech ? `words of clips without a transcript recognised by ${speech.model}`
      : "no speech recognition: give each clip's transcript");
  $("transcript").required = !speech;
  $("low").textContent = range[0];
  $("high").textContent = range[1];
  $("band").style.left = position(-band) + "%";
  $("band").style.width = position(band) - position(-band) + "%";
}

function show(result) {
  $("score").textContent = fmt(result.score);
  $("sentiment").textContent = result.sentiment;
  $("sentiment").className = result.sentiment;
  $("marker").style.left = `calc(${position(result.score)}% - 1px)`;
  for (const head of ["text", "audio", "vision"]) {
    $(head).textContent = fmt(result[head]);
    drawBar($("bar-" + head), result[head]);
  }
  $("words").textContent = result.transcript;
  $("words-source").textContent = source(result.speech);
  $("flags").textContent = result.flags.length ? result.flags.join(", ") : "none";
  $("seconds").textContent = result.seconds.toFixed(2);
  $("result").hidden = false;
}

// Where the words came from: typed, or recognised (and how sure the recogniser was).
function source(speech) {
  if (speech.text_source !== "asr") return "(as typed)";
  if (speech.no_speech) return `(${speech.model} heard no speech)`;
  return `(recognised by ${speech.model}` + (speech.unsure ? "; unsure: another language?" : "") + ")";
}

function remember(file, result) {
  count += 1;
  const row = document.createElement("tr");
  const said = result.speech.text_source === "asr" ? `${result.transcript} [recognised]` : result.transcript;
  const cells = [count, file, said, fmt(result.score), result.sentiment, fmt(result.text),
    fmt(result.audio), fmt(result.vision), result.flags.join(", ")];
  cells.forEach((value, i) => {
    const cell = document.createElement("td");
    cell.textContent = value;  // text, never HTML: file names and transcripts are the user's
    if (i === 0 || (i >= 3 && i !== 4 && i !== 8)) cell.className = "num";
    row.appendChild(cell);
  });
  $("history").tBodies[0].prepend(row);
}

async function submit(event) {
  event.preventDefault();
  const form = $("form");
  const file = $("video").files[0];
  $("error").hidden = true;
  $("submit").disabled = true;
  $("status").textContent = "Scoring…";
  try {
    const response = await fetch("/predict", { method: "POST", body: new FormData(form) });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error(body.detail + (retry ? ` (retry in ${retry} s)` : ""));
    }
    show(body);
    remember(file ? file.name : "", body);
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  } finally {
    $("submit").disabled = false;
    $("status").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", submit);
  loadInfo();
});
