// The two failures albert-run-cpp reports: a bad input line, and a bundle it cannot use. main() catches both.
#pragma once

#include <stdexcept>
#include <string>

namespace albert {

// One input line cannot be answered (not UTF-8, not the JSON the task takes, no mask, ...).
struct InputError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The bundle is missing a file, fails its checksum, or holds what this example does not run.
struct BundleError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace albert
