// TidemarkDaemon: the engine's long-running side. A daemon is a ServiceGroup of services (the cycle scheduler,
// the metrics endpoint); signals come from swift-service-lifecycle and cancel work, never reset handlers.
import TidemarkEngine
