"""MedSAM3D for 3D Slicer: click inside an organ or a lesion, get its 3D mask as a segment.

Slicer never imports torch. The module starts the user's own ``medsam3d`` executable once, as a background
process (``medsam3d serve --stdio``), and talks JSON lines with it: the scan goes over once as a temporary NRRD,
then each click is a small request whose reply carries only the box of voxels that changed.
"""

import base64
import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import zlib

import numpy as np

import ctk  # noqa: F401  (Slicer's widgets; imported as every scripted module does)
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

PROTOCOL_VERSION = 1  # the worker protocol this module speaks (medsam3d/serve/protocol.py)
SETTINGS_EXECUTABLE = "MedSAM3D/executable"
SETTINGS_THREADS = "MedSAM3D/threads"
SETTINGS_INCREMENTAL = "MedSAM3D/incremental"


class MedSAM3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAM3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["medsam3d contributors"]
        self.parent.helpText = (
            "Click inside a structure to get its 3D mask; negative clicks remove what does not belong. The model "
            "runs in your own medsam3d installation (pip install medsam3d), started once in the background; set "
            "its path under Worker if it is not on PATH.")
        self.parent.acknowledgementText = (
            "medsam3d (Apache-2.0). The worker pattern follows SlicerTotalSegmentator's: the tool runs as its "
            "own process, so Slicer's Python never needs torch.")


# ---------------------------------------------------------------------------------------------- worker client
class WorkerError(RuntimeError):
    pass


class WorkerClient:
    """A ``medsam3d serve --stdio`` process: requests out on stdin, replies in from stdout (a reader thread),
    the worker's log from stderr (another). Replies are matched to requests by ``id``."""

    def __init__(self, command, log=None):
        self.command = list(command)
        self.log = log or logging.info
        self.process = None
        self.finished = queue.Queue()  # ids of replies that arrived, in order
        self._replies = {}
        self._lock = threading.Condition()
        self._next_id = 0
        self.log_tail = []

    def start(self):
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, creationflags=flags)
        threading.Thread(target=self._read_replies, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def send(self, cmd, **fields):
        if not self.running:
            raise WorkerError("the medsam3d worker is not running" + self._last_words())
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
        line = json.dumps({"id": request_id, "cmd": cmd, **fields}) + "\n"
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except OSError:
            raise WorkerError("the medsam3d worker stopped" + self._last_words()) from None
        return request_id

    def take(self, request_id, timeout=None):
        """The reply to ``request_id`` (waits up to ``timeout`` s; None: do not wait)."""
        with self._lock:
            if timeout:
                self._lock.wait_for(lambda: request_id in self._replies or not self.running, timeout)
            if request_id not in self._replies:
                if not self.running:
                    raise WorkerError("the medsam3d worker stopped" + self._last_words())
                if timeout:
                    raise WorkerError(f"no reply from the medsam3d worker in {timeout:.0f} s")
                return None
            return self._replies.pop(request_id)

    def request(self, cmd, timeout=600.0, **fields):
        reply = self.take(self.send(cmd, **fields), timeout)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "unknown error"))
        return reply

    def stop(self):
        if self.process is None:
            return
        if self.running:
            try:
                self.send("shutdown")
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, WorkerError, subprocess.TimeoutExpired):
                self.process.kill()
        self.process = None

    def _read_replies(self):
        for line in self.process.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                self.log(f"worker: unreadable reply {line[:200]!r}")
                continue
            with self._lock:
                self._replies[reply.get("id")] = reply
                self._lock.notify_all()
            self.finished.put(reply.get("id"))
        with self._lock:
            self._lock.notify_all()
        self.finished.put(None)  # the process ended

    def _read_log(self):
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log_tail = (self.log_tail + [line])[-20:]
            self.log(line)

    def _last_words(self):
        return (": " + self.log_tail[-1]) if self.log_tail else ""


# ---------------------------------------------------------------------------------------------- logic
class MedSAM3DLogic(ScriptedLoadableModuleLogic):
    """Drives the worker: one session per scan, one worker object per segment. Everything is asynchronous:
    ``submit`` sends, ``process_replies`` (called from a timer on the main thread) applies what came back."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.hello = None
        self.session = None
        self.volumeNode = None
        self.shape = None  # the scan's (I, J, K)
        self.masks = {}  # segment id -> uint8 (K, J, I) copy of the worker's mask, as Slicer arrays are ordered
        self.pending = {}  # request id -> (cmd, callback)
        self.state = "not started"
        self.on_state = lambda state: None
        self.on_log = lambda line: logging.info(line)
        self.click_times = []  # seconds from a click's submission to its mask in the segment

    # -------------------------------------------------------------- settings
    @staticmethod
    def executable():
        configured = qt.QSettings().value(SETTINGS_EXECUTABLE, "") or ""
        found = configured or shutil.which("medsam3d")
        if not found:
            raise WorkerError("medsam3d not found: install it (pip install medsam3d) in a Python of your own and "
                              "set its path under Worker, or put it on PATH")
        return found

    @staticmethod
    def set_executable(path):
        qt.QSettings().setValue(SETTINGS_EXECUTABLE, path or "")

    # -------------------------------------------------------------- worker
    def start_worker(self, executable=None, threads=2, incremental=True, extra_args=()):
        """Start the worker in the background; ``state`` becomes "ready" when it has loaded its model.
        ``incremental``: a click re-decodes only the windows it changes (the worker's default; False: every window
        of the object, slower on organs larger than one window)."""
        self.stop_worker()
        # --backend auto: ONNX Runtime (no torch in the worker either, faster clicks) when medsam3d[onnx] is there
        command = [executable or self.executable(), "serve", "--stdio", "--threads", str(int(threads)),
                   "--backend", "auto", "--incremental" if incremental else "--every-window", *extra_args]
        self.client = WorkerClient(command, log=self.on_log)
        self.client.start()
        self._set_state("starting the worker (loading its model)")
        self.submit("hello", self._on_hello)

    def stop_worker(self):
        if self.client is not None:
            self.client.stop()
        self.client, self.session, self.hello = None, None, None
        self.pending.clear()
        self._set_state("not started")

    def _on_hello(self, reply):
        if reply.get("protocol") != PROTOCOL_VERSION:
            self.stop_worker()
            raise WorkerError(f"the worker speaks protocol {reply.get('protocol')}, this module {PROTOCOL_VERSION}:"
                              " update medsam3d or the extension so they match")
        self.hello = reply
        self._set_state(f"ready: {reply.get('model')} on {reply.get('device')} ({reply.get('backend')}), "
                        f"{reply.get('threads')} thread(s), medsam3d {reply.get('medsam3d')}")

    # -------------------------------------------------------------- requests
    def submit(self, cmd, callback=None, **fields):
        if self.client is None:
            raise WorkerError("start the worker first")
        request_id = self.client.send(cmd, **fields)
        self.pending[request_id] = (cmd, callback)
        return request_id

    def process_replies(self):
        """Apply every reply that has arrived (call on the main thread). -> number handled."""
        handled = 0
        while self.client is not None:
            try:
                request_id = self.client.finished.get_nowait()
            except queue.Empty:
                break
            if request_id is None:  # the process ended
                self._fail_pending("the medsam3d worker stopped" + self.client._last_words())
                self.client, self.session = None, None
                self._set_state("stopped")
                break
            if request_id not in self.pending:
                continue
            cmd, callback = self.pending.pop(request_id)
            reply = self.client.take(request_id)
            handled += 1
            if not reply.get("ok"):
                self.on_log(f"{cmd}: {reply.get('error')}")
                self._set_state(f"{cmd} failed: {reply.get('error')}")
            elif callback is not None:
                try:
                    callback(reply)
                except WorkerError as exc:
                    self._set_state(str(exc))
        return handled

    def wait_idle(self, timeout=600.0):
        """Block until every submitted request is answered and applied (tests, scripts)."""
        end = time.monotonic() + timeout
        while self.pending:
            if self.client is None or time.monotonic() > end:
                raise WorkerError(f"worker did not answer: {self.state}")
            if not self.process_replies():
                time.sleep(0.002)

    def _fail_pending(self, message):
        self.pending.clear()
        self.on_log(message)

    def _set_state(self, state):
        self.state = state
        self.on_state(state)

    # -------------------------------------------------------------- scan and segments
    def load_volume(self, volumeNode):
        """Send the scan to the worker as a temporary NRRD (as Slicer stores it, in the node's own frame)."""
        if self.session is not None:
            self.submit("close", session=self.session)
            self.session = None
        self.volumeNode, self.masks, self.shape = volumeNode, {}, None
        folder = tempfile.mkdtemp(prefix="medsam3d-")
        path = os.path.join(folder, "scan.nrrd")
        if not slicer.util.saveNode(volumeNode, path):
            shutil.rmtree(folder, ignore_errors=True)
            raise WorkerError(f"could not write {volumeNode.GetName()} to {path}")
        self._set_state(f"loading {volumeNode.GetName()}")

        def loaded(reply):
            shutil.rmtree(folder, ignore_errors=True)  # the worker holds the scan in memory now
            self.session, self.shape = reply["session"], tuple(reply["shape"])
            self._set_state(f"ready: {volumeNode.GetName()} {'x'.join(map(str, self.shape))}, "
                            f"{reply['modality'].upper()}")

        self.submit("load", loaded, path=path)

    def new_segment(self, segmentationNode, name=""):
        segmentation = segmentationNode.GetSegmentation()
        return segmentation.AddEmptySegment(name or f"MedSAM3D {segmentation.GetNumberOfSegments() + 1}")

    def add_click(self, segmentationNode, segmentId, ras_world, positive=True):
        """One click (world RAS, mm) on ``segmentId``: the worker refines that object and the changed voxels
        come back into the segment."""
        self._need_session()
        started = time.perf_counter()
        ras = self.world_to_volume(ras_world)
        self.submit("add_point", None, session=self.session, object=segmentId, point=[float(v) for v in ras],
                    coords="ras", positive=bool(positive))
        self._fetch_mask(segmentationNode, segmentId, started)

    def undo(self, segmentationNode, segmentId):
        self._need_session()
        self.submit("undo", None, session=self.session, object=segmentId)
        self._fetch_mask(segmentationNode, segmentId)

    def reset(self, segmentationNode, segmentId):
        self._need_session()
        self.submit("reset", None, session=self.session, object=segmentId)
        self._fetch_mask(segmentationNode, segmentId)

    def world_to_volume(self, ras_world):
        """World RAS -> the volume node's own RAS (what its file stores), undoing any parent transform."""
        parent = self.volumeNode.GetParentTransformNode()
        if parent is None:
            return list(ras_world)
        transform = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(transform)
        return list(transform.TransformPoint(list(ras_world)))

    def _fetch_mask(self, segmentationNode, segmentId, started=None):
        def apply(reply):
            self.apply_mask(segmentationNode, segmentId, reply)
            if started is not None:
                self.click_times.append(time.perf_counter() - started)

        self.submit("get_mask", apply, session=self.session, object=segmentId, inline=True)

    def apply_mask(self, segmentationNode, segmentId, reply):
        """Patch the changed box into our copy of the object's mask and show it in the segment."""
        mask = self.masks.get(segmentId)
        if mask is None:
            mask = self.masks[segmentId] = np.zeros(self.shape[::-1], dtype=np.uint8)
        if reply.get("box") is None:
            return
        (i0, j0, k0), (i1, j1, k1) = reply["box"]
        part = np.frombuffer(zlib.decompress(base64.b64decode(reply["data"])), dtype=np.uint8)
        part = part.reshape(i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1)
        mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = part.transpose(2, 1, 0)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, self.volumeNode)

    def _need_session(self):
        if self.session is None:
            raise WorkerError("no scan loaded in the worker yet: choose a scan (and wait for 'ready')")


# ---------------------------------------------------------------------------------------------- widget
class MedSAM3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.clicksNode = None
        self.timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAM3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSAM3DLogic()
        self.logic.on_state = lambda state: self.ui.statusLabel.setText(f"Worker: {state}")
        self.logic.on_log = lambda line: self.ui.logText.appendPlainText(line)

        settings = qt.QSettings()
        self.ui.executablePathLineEdit.currentPath = settings.value(SETTINGS_EXECUTABLE, "") or ""
        self.ui.threadsSpinBox.value = int(settings.value(SETTINGS_THREADS, 2) or 2)
        self.ui.incrementalCheckBox.checked = str(settings.value(SETTINGS_INCREMENTAL, "true")).lower() == "true"

        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.newSegmentButton.connect("clicked(bool)", self.onNewSegment)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.restartButton.connect("clicked(bool)", self.onRestart)
        shortcut = qt.QShortcut(qt.QKeySequence("Ctrl+Shift+N"), slicer.util.mainWindow())
        shortcut.connect("activated()", lambda: self.ui.negativeCheckBox.setChecked(not self.ui.negativeCheckBox.checked))

        self.clicksNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MedSAM3D clicks")
        self.clicksNode.SetSaveWithScene(False)
        self.ui.placeWidget.setCurrentNode(self.clicksNode)
        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.addObserver(self.clicksNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClick)

        self.timer = qt.QTimer()
        self.timer.setInterval(20)
        self.timer.connect("timeout()", self.onTimer)
        self.timer.start()

    def cleanup(self):
        if self.timer is not None:
            self.timer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.stop_worker()

    # -------------------------------------------------------------- events
    def onRestart(self, _=None):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_EXECUTABLE, self.ui.executablePathLineEdit.currentPath)
        settings.setValue(SETTINGS_THREADS, self.ui.threadsSpinBox.value)
        settings.setValue(SETTINGS_INCREMENTAL, "true" if self.ui.incrementalCheckBox.checked else "false")
        self._guard(lambda: self.logic.start_worker(threads=self.ui.threadsSpinBox.value,
                                                    incremental=self.ui.incrementalCheckBox.checked))
        if self.ui.volumeSelector.currentNode() is not None:
            self.onVolumeChanged(self.ui.volumeSelector.currentNode())

    def onVolumeChanged(self, node):
        if node is None:
            return
        if self.logic.client is None:
            self.onRestart()
            return
        self._guard(lambda: self.logic.load_volume(node))
        segmentation = self.ui.segmentationSelector.currentNode()
        if segmentation is not None:
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)

    def onSegmentationChanged(self, node):
        self.ui.segmentSelector.setCurrentNode(node)
        volume = self.ui.volumeSelector.currentNode()
        if node is not None and volume is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            node.CreateDefaultDisplayNodes()

    def onNewSegment(self, _=None):
        segmentation = self._segmentation()
        segmentId = self.logic.new_segment(segmentation)
        self.ui.segmentSelector.setCurrentSegmentID(segmentId)

    def onClick(self, caller, event):
        n = self.clicksNode.GetNumberOfControlPoints()
        if n == 0:
            return
        ras = [0.0, 0.0, 0.0]
        self.clicksNode.GetNthControlPointPositionWorld(n - 1, ras)
        positive = not self.ui.negativeCheckBox.checked
        self.clicksNode.SetNthControlPointLabel(n - 1, "+" if positive else "-")
        segmentation = self._segmentation()
        segmentId = self.ui.segmentSelector.currentSegmentID() or self.logic.new_segment(segmentation)
        self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        self._guard(lambda: self.logic.add_click(segmentation, segmentId, ras, positive))

    def onUndo(self, _=None):
        segmentId = self.ui.segmentSelector.currentSegmentID()
        if segmentId:
            self._guard(lambda: self.logic.undo(self._segmentation(), segmentId))

    def onReset(self, _=None):
        segmentId = self.ui.segmentSelector.currentSegmentID()
        if segmentId:
            self._guard(lambda: self.logic.reset(self._segmentation(), segmentId))
            self.clicksNode.RemoveAllControlPoints()

    def onTimer(self):
        self._guard(self.logic.process_replies)

    # -------------------------------------------------------------- helpers
    def _segmentation(self):
        node = self.ui.segmentationSelector.currentNode()
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSAM3D")
            self.ui.segmentationSelector.setCurrentNode(node)
        return node

    def _guard(self, action):
        try:
            action()
        except WorkerError as exc:
            self.ui.statusLabel.setText(f"Worker: {exc}")


# ---------------------------------------------------------------------------------------------- scenario + test
def run_scenario(logic, volumeNode, segmentationNode, objects, timeout=600.0):
    """The module's standard check, run by the tests outside Slicer and by the self-test inside it.

    ``objects``: {segment name: [(ras_world, positive), ...]}; clicks alternate between the objects. ->
    {segment id: (K, J, I) uint8 mask as the segment received it}."""
    logic.load_volume(volumeNode)
    logic.wait_idle(timeout)
    ids = {name: logic.new_segment(segmentationNode, name) for name in objects}
    queues = {name: list(clicks) for name, clicks in objects.items()}
    while any(queues.values()):
        for name, clicks in queues.items():
            if clicks:
                ras, positive = clicks.pop(0)
                logic.add_click(segmentationNode, ids[name], ras, positive)
                logic.wait_idle(timeout)
    return {ids[name]: logic.masks[ids[name]].copy() for name in objects}


class MedSAM3DTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode, Reload and Test). Needs medsam3d installed (settings or PATH)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_two_objects()

    def test_two_objects(self):
        # a synthetic CT: soft tissue with two brighter blobs, 1.5 mm voxels
        k, j, i = np.mgrid[0:80, 0:96, 0:96]
        scan = np.full((80, 96, 96), 40, dtype=np.int16)
        scan[((i - 30) ** 2 + (j - 48) ** 2 + (k - 40) ** 2) < 15 ** 2] = 200
        scan[((i - 70) ** 2 + (j - 48) ** 2 + (k - 40) ** 2) < 10 ** 2] = 400
        volumeNode = slicer.util.addVolumeFromArray(scan, nodeClassName="vtkMRMLScalarVolumeNode")
        volumeNode.SetSpacing(1.5, 1.5, 1.5)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)

        def ras(ijk):
            matrix = vtk.vtkMatrix4x4()
            volumeNode.GetIJKToRASMatrix(matrix)
            return matrix.MultiplyPoint(list(ijk) + [1.0])[:3]

        logic = MedSAM3DLogic()
        logic.start_worker(threads=2)
        try:
            masks = run_scenario(logic, volumeNode, segmentationNode,
                                 {"big": [(ras((30, 48, 40)), True)], "small": [(ras((70, 48, 40)), True)]})
        finally:
            logic.stop_worker()
        big, small = masks.values()
        self.assertTrue(big[40, 48, 30] and small[40, 48, 70])
        self.assertFalse(big[40, 48, 70])
        self.delayDisplay("MedSAM3D: two objects segmented")
