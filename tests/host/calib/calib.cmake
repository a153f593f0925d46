# Tests of safetensors I/O, norms, calibration, allocation, dispatch and the skv command line.
# Included from tests/host/CMakeLists.txt; needs nlohmann-json (the CLI end-to-end test also CLI11).
if(NOT nlohmann_json_FOUND)
  message(STATUS "skv: nlohmann-json not found; the calibration tests are skipped")
  return()
endif()

set(SKV_CALIB_DIR ${CMAKE_CURRENT_LIST_DIR})
add_executable(skv_calib_tests
  ${SKV_CALIB_DIR}/test_safetensors.cpp
  ${SKV_CALIB_DIR}/test_spectral.cpp
  ${SKV_CALIB_DIR}/test_distortion.cpp
  ${SKV_CALIB_DIR}/test_allocate.cpp
  ${SKV_CALIB_DIR}/test_sensitivity.cpp
  ${SKV_CALIB_DIR}/test_dispatch.cpp)
target_include_directories(skv_calib_tests PRIVATE ${SKV_CALIB_DIR} ${PROJECT_SOURCE_DIR}/examples)
target_link_libraries(skv_calib_tests PRIVATE skv::skv nlohmann_json::nlohmann_json GTest::gtest GTest::gtest_main)
target_compile_options(skv_calib_tests PRIVATE ${SKV_WARNINGS} -Werror ${SKV_TEST_OPTIMIZATION})
gtest_discover_tests(skv_calib_tests TEST_PREFIX calib. PROPERTIES LABELS host DISCOVERY_TIMEOUT 60)

# The command line end to end: generate a dump and a checkpoint, run every subcommand, check the
# JSON and the exit codes (tests/host/calib/cli_e2e.cmake).
if(CLI11_FOUND AND SKV_BUILD_EXAMPLES)  # skv_cli is defined later, in examples/cli.cmake
  add_test(NAME calib.cli_end_to_end
           COMMAND ${CMAKE_COMMAND} -DSKV=$<TARGET_FILE:skv_cli> -DWORK=${CMAKE_CURRENT_BINARY_DIR}/cli_e2e
                   -P ${SKV_CALIB_DIR}/cli_e2e.cmake)
  set_tests_properties(calib.cli_end_to_end PROPERTIES LABELS host)
endif()

# libFuzzer target for everything skv reads from files (fuzz_safetensors.cpp: safetensors headers,
# checkpoints, config.json, K/V dumps), defined when clang++ can link -fsanitize=fuzzer (the project
# compiler may be g++). Not part of the default build; `cmake --workflow --preset fuzz` builds it and
# runs it for SKV_FUZZ_SECONDS (the test fuzz.inputs, defined only with -DSKV_FUZZ=ON).
option(SKV_FUZZ "Add the fuzz.inputs test: run the libFuzzer target for SKV_FUZZ_SECONDS" OFF)
set(SKV_FUZZ_SECONDS 60 CACHE STRING "Seconds the fuzz.inputs test runs the fuzzer")
find_program(SKV_CLANGXX NAMES clang++ clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
if(SKV_CLANGXX)
  set(fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/skv_fuzz_safetensors)
  execute_process(COMMAND ${SKV_CLANGXX} -x c++ -std=c++17 -fsanitize=fuzzer,address -o ${CMAKE_CURRENT_BINARY_DIR}/fuzz_probe -
                  INPUT_FILE ${SKV_CALIB_DIR}/fuzz_probe.cpp RESULT_VARIABLE fuzz_probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(fuzz_probe_rc EQUAL 0)
    get_target_property(json_inc nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
    set(json_flags "")
    foreach(dir ${json_inc})
      if(NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES AND NOT dir STREQUAL "/usr/include")
        list(APPEND json_flags -isystem ${dir})
      endif()
    endforeach()
    file(GLOB_RECURSE fuzz_headers CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/skv/io/*.hpp
         ${PROJECT_SOURCE_DIR}/include/skv/calib/*.hpp ${PROJECT_SOURCE_DIR}/include/skv/quant/*.hpp)
    add_custom_command(OUTPUT ${fuzz_bin}
                       COMMAND ${SKV_CLANGXX} -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined
                               -I${PROJECT_SOURCE_DIR}/include ${json_flags} ${SKV_CALIB_DIR}/fuzz_safetensors.cpp -o ${fuzz_bin}
                       DEPENDS ${SKV_CALIB_DIR}/fuzz_safetensors.cpp ${fuzz_headers}
                       COMMENT "Building the input fuzzer with ${SKV_CLANGXX}")
    add_custom_target(skv_fuzz_safetensors DEPENDS ${fuzz_bin})
    if(SKV_FUZZ)
      # a fresh corpus each run, seeded with the dictionary of the formats' keywords
      add_test(NAME fuzz.inputs
               COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
                       ${fuzz_bin} -max_total_time=${SKV_FUZZ_SECONDS} -rss_limit_mb=2048 -timeout=10
                       -dict=${SKV_CALIB_DIR}/fuzz_inputs.dict -print_final_stats=1)
      set_tests_properties(fuzz.inputs PROPERTIES LABELS fuzz TIMEOUT 900)
    endif()
  else()
    message(STATUS "skv: ${SKV_CLANGXX} cannot link -fsanitize=fuzzer; the input fuzzer is skipped "
                   "(apt-get install libclang-rt-14-dev)")
  endif()
endif()
