"""What warm_pool and the provisioner both rely on about a browser: its Chromium flags, its
DevTools port, and the labels of its pod (the provisioner's Deployment makes them, warm_pool
leases pods by them)."""

# Every pool browser's flags, local or in a pod (each backend adds its own: headless mode, the
# DevTools address, the sandbox). Headless Chromium 15x still preloads the omnibox popup's WebUI
# in a renderer of its own: ~0.8 of the ~1.2 CPU-seconds a launch costs, for a UI nobody sees
# (measured: launch → +2 s, 1.2 → 0.4 CPU-s). Unknown feature names are ignored by older versions.
CHROMIUM_FLAGS = ("--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--no-default-browser-check",
                  "--disable-breakpad", "--disable-extensions", "--disable-default-apps",
                  "--disable-component-extensions-with-background-pages", "--disable-field-trial-config",
                  "--disable-features=WebUIOmniboxPopup,WebUIOmniboxFullPopup,WebUIOmniboxAimPopup,"
                  "OmniboxAimPopup,AiModeOmniboxEntryPoint,OmniboxFullPopup")

DEVTOOLS_PORT = 9222
DEVTOOLS_PORT_NAME = "devtools"  # the container port's name in a browser pod

COMPONENT_LABEL = "app.kubernetes.io/component"
BROWSER_COMPONENT = "browser"
TENANT_LABEL = "browserfleet.io/tenant"
POOL_LABEL = "browserfleet.io/pool"  # "warm" while the Deployment owns the pod, "leased" after
SESSION_LABEL = "browserfleet.io/session"
BROWSER_LABEL = "browserfleet.io/browser"
WARM, LEASED = "warm", "leased"
