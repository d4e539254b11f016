// Live updates for the dashboard: one EventSource per page, rows updated in place.
// Every value from the server is set with textContent, never as HTML.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const jobId = document.body.dataset.jobId;

  function setStatus(cell, status) {
    cell.textContent = status;
    cell.className = "status status-" + status;
  }

  function setProgress(cell, progress) {
    const bar = cell.querySelector("progress");
    const label = cell.querySelector(".pct");
    if (progress === null || progress === undefined) {
      bar.removeAttribute("value");
      label.textContent = "-";
    } else {
      bar.value = progress;
      label.textContent = Math.round(progress * 100) + "%";
    }
  }

  function jobRow(job) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const idCell = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + encodeURIComponent(job.id);
    link.className = "mono";
    link.textContent = job.id;
    idCell.appendChild(link);
    const provider = document.createElement("td");
    provider.textContent = job.provider;
    const status = document.createElement("td");
    status.dataset.field = "status";
    const progress = document.createElement("td");
    progress.dataset.field = "progress";
    progress.appendChild(document.createElement("progress")).max = 1;
    progress.appendChild(document.createTextNode(" "));
    progress.appendChild(document.createElement("span")).className = "pct";
    const task = document.createElement("td");
    task.className = "mono";
    task.textContent = job.task_id || "-";
    row.append(idCell, provider, status, progress, task);
    return row;
  }

  function updateJob(job) {
    const key = '[data-job-id="' + CSS.escape(job.id) + '"]';
    let row = document.querySelector("tr" + key + ", dl" + key);
    if (!row && page === "jobs") {
      row = jobRow(job);
      const body = document.querySelector("#jobs tbody");
      body.insertBefore(row, body.firstChild);
    }
    if (!row) return;
    setStatus(row.querySelector('[data-field="status"]'), job.status);
    setProgress(row.querySelector('[data-field="progress"]'), job.progress);
    const raw = row.querySelector('[data-field="raw_status"]');
    if (raw) raw.textContent = job.raw_status || "-";
  }

  function updateDelivery(delivery) {
    const row = document.querySelector('tr[data-delivery-id="' + CSS.escape(delivery.id) + '"]');
    if (!row) return;
    const state = row.querySelector('[data-field="state"]');
    state.textContent = delivery.state;
    state.className = "state-" + delivery.state;
    row.querySelector('[data-field="attempts"]').textContent = String(delivery.attempts);
    row.querySelector('[data-field="last_error"]').textContent = delivery.last_error || "-";
    const replay = row.querySelector("form.replay");
    if (replay) replay.hidden = !(delivery.state === "dead" || delivery.state === "done");
  }

  if (page !== "jobs" && page !== "job") return;
  const url = page === "job" ? "/ui/stream?job=" + encodeURIComponent(jobId) : "/ui/stream";
  const source = new EventSource(url);
  source.addEventListener("job", function (message) { updateJob(JSON.parse(message.data)); });
  source.addEventListener("delivery", function (message) { updateDelivery(JSON.parse(message.data)); });
  source.addEventListener("open", function () { document.body.dataset.live = "yes"; });
  source.addEventListener("error", function () { document.body.dataset.live = "no"; });
})();
