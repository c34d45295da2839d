"""Benchmark: attestation evidence generation and verification, software and swtpm paths.

Builds a small bundle, then times (median of N runs, milliseconds):

* ``measure``: verify the bundle and build the measurement log (code digest included);
* ``quote (software)``: sign the EAT with the software attestation key;
* ``quote (swtpm)``: derive the AK, reset + extend PCR 23, TPM2_Quote, sign the EAT;
* ``verify (software|swtpm)``: nonce store round trip + full appraisal.

The swtpm rows need ``swtpm`` and ``tpm2-pytss``; the benchmark starts its own
swtpm on a unix socket in a temporary directory and says so when it cannot.
Run: ``.venv/bin/python benchmarks/bench_attest.py [--runs N] [--json-out PATH]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeguard import data
from edgeguard.api import build_bundle
from edgeguard.attest.attester import make_evidence, measure_bundle
from edgeguard.attest.nonce import NonceStore, NonceVerdict
from edgeguard.attest.reference import load_reference_values, write_reference_values
from edgeguard.attest.tpm import AkBinding, TpmAttester
from edgeguard.attest.verifier import appraise, verify_evidence
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.runtime.opener import verify_bundle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _start_swtpm(d: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    if shutil.which("swtpm") is None:
        return None, "swtpm not installed"
    try:
        import tpm2_pytss  # noqa: F401
    except Exception as exc:
        return None, f"tpm2-pytss unavailable: {exc}"
    sock = d / "sock"
    argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d}", "--server"]
    argv += [f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl"]
    argv += ["--flags", "startup-clear,not-need-init"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (sock.exists() and Path(f"{sock}.ctrl").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return None, "swtpm did not start"
        time.sleep(0.05)
    time.sleep(0.1)
    return proc, f"swtpm:path={sock}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    add_json_out(ap)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eg-bench-attest-"))
    proc = None
    try:
        signer = SignerKey.generate()
        device = DeviceKey.generate("bench-01", kem="x25519")
        bundle = root / "b.egb"
        build_bundle(
            [data.model_path("digits_mlp")],
            out=bundle,
            signer=signer,
            recipients=[device.public],
            profiles=["generic-cpu"],
            version=1,
        )
        trust = TrustStore.of([signer.public])
        kernels = root / "kernels"
        kernels.mkdir()
        ref = load_reference_values(
            write_reference_values(bundle, signer=signer, kernel_dirs=[kernels]), trust=trust
        )
        store = NonceStore(root / "verifier")

        def measure() -> object:
            vb = verify_bundle(bundle, trust=trust)
            return measure_bundle(vb, device_profile="generic-cpu", kernel_dirs=[kernels])

        log = measure()
        rows: list[tuple[str, str]] = []
        figures: dict[str, Any] = {}

        def add(key: str, label: str, ms: float) -> None:
            figures[key] = ms
            rows.append((label, f"{ms:8.2f}"))

        add("measure_ms", "measure (verify bundle + log)", _median_ms(measure, args.runs))
        nonce = b"\x5a" * 32
        add(
            "quote_software_ms",
            "quote (software)",
            _median_ms(lambda: make_evidence(log, device_key=device, nonce=nonce), args.runs),
        )

        def verify_once(make: Callable[[bytes], bytes], ak: AkBinding | None) -> Callable[[], None]:
            def run() -> None:
                ch = store.issue()
                ev = make(ch.nonce)
                t0 = time.perf_counter()
                r = verify_evidence(
                    ev, nonce=ch.nonce, device=device.public, reference=ref, store=store, ak=ak
                )
                verify_times.append((time.perf_counter() - t0) * 1000)
                assert r.ok, r.failures()

            return run

        verify_times: list[float] = []
        sw = verify_once(lambda n: make_evidence(log, device_key=device, nonce=n), None)
        for _ in range(args.runs):
            sw()
        add(
            "verify_software_ms",
            "verify (software, incl. nonce store)",
            statistics.median(verify_times),
        )
        fresh = NonceVerdict("fresh", 0, "bench")
        ev_sw = make_evidence(log, device_key=device, nonce=nonce)

        def appraise_sw() -> object:
            return appraise(
                ev_sw, nonce=nonce, nonce_verdict=fresh, device=device.public, reference=ref
            )

        add("appraise_software_ms", "appraise only (software)", _median_ms(appraise_sw, args.runs))

        (root / "tpm").mkdir()
        proc, tcti = _start_swtpm(root / "tpm")
        figures["swtpm"] = "used" if proc is not None else f"skipped: {tcti}"
        if proc is None:
            rows.append(("quote (swtpm)", f"skipped: {tcti}"))
            rows.append(("verify (swtpm)", f"skipped: {tcti}"))
        else:
            kid = device.public.key_id
            with TpmAttester(tcti) as tpm:
                area = tpm.ak_public(device_key_id=kid)
                ak = AkBinding.create(area, device_key_id=kid, attest_key=device.attest)
                add(
                    "quote_swtpm_ms",
                    "quote (swtpm: AK + PCR 23 + Quote)",
                    _median_ms(
                        lambda: make_evidence(log, device_key=device, nonce=nonce, tpm=tpm),
                        args.runs,
                    ),
                )
                verify_times = []
                tp = verify_once(
                    lambda n: make_evidence(log, device_key=device, nonce=n, tpm=tpm), ak
                )
                for _ in range(args.runs):
                    tp()
                add(
                    "verify_swtpm_ms",
                    "verify (swtpm, incl. nonce store)",
                    statistics.median(verify_times),
                )
                ev_tpm = make_evidence(log, device_key=device, nonce=nonce, tpm=tpm)

                def appraise_tpm() -> object:
                    return appraise(
                        ev_tpm,
                        nonce=nonce,
                        nonce_verdict=fresh,
                        device=device.public,
                        reference=ref,
                        ak=ak,
                    )

                add(
                    "appraise_swtpm_ms",
                    "appraise only (swtpm)",
                    _median_ms(appraise_tpm, args.runs),
                )
        figures["log_entries"] = len(log.entries)
        write_record(
            make_record(
                "attest",
                params={"runs": args.runs},
                results=figures,
                libs=("cryptography", "tpm2-pytss"),
            ),
            args.json_out,
        )
        print(f"attestation benchmark: {len(log.entries)} log entries, median of {args.runs} runs")
        for name, value in rows:
            unit = "" if value.startswith("skipped") else " ms"
            print(f"  {name:<36} {value}{unit}")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
