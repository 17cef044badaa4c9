"""The producers' side of the broker rotation's handshake, on files only (no broker)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from heartbeat_platform.domain.broker_rotation import Phase
from heartbeat_platform.local.process import write_json
from heartbeat_platform.local.rotation import ProduceGate, RotationFiles
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerConfig

EVENT = {"customer_id": "CUST_00001", "heart_rate": 70, "timestamp": "2026-01-01T00:00:00Z"}


def pause(files: RotationFiles, rotation: int = 1) -> None:
    files.write({"phase": Phase.PAUSING.value, "rotation": rotation, "log": 0})


def test_a_registered_producer_is_waited_for_until_it_acknowledges(tmp_path):
    files = RotationFiles(tmp_path)
    gate = ProduceGate(tmp_path)
    assert not gate.paused() and files.waiting(1) == 1
    pause(files)
    gate.acknowledge()
    assert files.waiting(1) == 0
    assert files.waiting(2) == 1  # the next rotation needs its own acknowledgement
    gate.close()
    assert files.waiting(2) == 0


def test_a_registration_left_by_a_dead_process_is_not_waited_for(tmp_path):
    files = RotationFiles(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(dead.pid).create_time()
    dead.wait()
    (tmp_path / "producers").mkdir()
    write_json(tmp_path / "producers" / "gone.json", {"pid": dead.pid, "started": started})
    assert files.waiting(1) == 0
    assert not (tmp_path / "producers" / "gone.json").exists()


def test_a_producer_stopping_while_paused_sends_nothing(tmp_path):
    pause(RotationFiles(tmp_path))
    producer = HeartbeatProducer(ProducerConfig("127.0.0.1:1", "t", rotation_dir=tmp_path))
    producer.request_stop()
    producer.send([EVENT] * 3)
    assert producer.report.sent == 0
    producer.close(timeout=0.1)


def test_a_paused_producer_acknowledges_waits_and_resumes_on_the_new_log(tmp_path):
    files = RotationFiles(tmp_path)
    pause(files)
    producer = HeartbeatProducer(ProducerConfig("127.0.0.1:1", "t", rotation_dir=tmp_path))
    sending = threading.Thread(target=producer.send, args=([EVENT] * 3,))
    sending.start()
    deadline = time.monotonic() + 30
    while files.waiting(1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files.waiting(1) == 0  # acknowledged
    assert producer.report.sent == 0 and sending.is_alive()  # and holds its events
    files.write({"phase": Phase.OPEN.value, "rotation": 1, "log": 1})
    sending.join(30)
    assert producer.report.sent == 3
    assert producer.report.pauses == 1 and len(producer.report.earlier_logs) == 1
    producer.close(timeout=0.1)  # nothing answers at 127.0.0.1:1: counted undelivered
    assert producer.report.undelivered == 3


def test_stopping_the_guard_calls_off_a_rotation_that_has_not_restarted_the_broker(tmp_path):
    from heartbeat_platform.local.broker import EmbeddedBroker
    from heartbeat_platform.local.rotation import BrokerRotation

    class Settings:  # only what the rotator reads before stepping
        heartbeat_broker_max_log_mb = 256
        heartbeat_broker_rotation_max_lag = 0

    files = RotationFiles(tmp_path)
    rotation = BrokerRotation(Settings(), EmbeddedBroker(tmp_path), "postgresql://unused")
    files.write({"phase": Phase.DRAINING.value, "rotation": 3, "log": 2})
    rotation.call_off("test")
    assert files.read()["phase"] == Phase.OPEN and files.read()["log"] == 2
    files.write({"phase": Phase.ADOPTING.value, "rotation": 3, "log": 3})
    rotation.call_off("test")
    assert files.read()["phase"] == Phase.ADOPTING  # the broker restarted: the next up finishes
